/*
 * eval.h - `doneshot eval`: perplexity of an original or a doneshot
 * (pack-quantized) checkpoint.
 */
#ifndef DS_EVAL_H
#define DS_EVAL_H

/* argv[0] is "eval". Returns the process exit code. Collective. */
int cmd_eval(int argc, char **argv);

#endif
