#include "common.h"
#include "comm.h"
int main(int argc, char **argv) { comm_init(&argc, &argv); comm_finalize(); return 0; }
