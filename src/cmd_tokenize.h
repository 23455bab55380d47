/*
 * cmd_tokenize.h - the `doneshot tokenize` subcommand (debugging aid and
 * benchmark driver for tokenizer.c).
 */
#ifndef DS_CMD_TOKENIZE_H
#define DS_CMD_TOKENIZE_H

/* doneshot tokenize --model DIR [--input FILE] [--bos|--no-bos] [--decode]
 * argv[0] is "tokenize". Encodes the whole input (stdin by default) as one
 * UTF-8 text and prints the ids on one line separated by spaces; --decode
 * reads whitespace-separated ids and prints the text. --bos (default) = HF
 * add_special_tokens=True, --no-bos = False. Returns the exit code: 0 ok,
 * 2 usage, 3 bad input files, 1 runtime failure. */
int cmd_tokenize(int argc, char **argv);

#endif
