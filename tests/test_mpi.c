/*
 * test_mpi.c - MPI behaviour of comm.c and the data-parallel Hessian
 * contract, nccl-tests "verifiable" style. Without MPI environment variables
 * this program is the parent: it re-launches itself under $MPIRUN at
 * -np 1, 2 and 4 and checks what the children wrote. Each child rank builds
 * its slice [floor(N*r/R), floor(N*(r+1)/R)) of N deterministic samples,
 * accumulates 2·XᵀX, reduces, and rank 0 writes the result; the parent
 * compares it with the Hessian of all N samples computed locally (the
 * expected global result), and the world sizes with each other.
 */
#include "comm.h"
#include "ops_cpu.h"
#include "test.h"

#include <stdlib.h>
#include <sys/wait.h>

enum { NSAMP = 13, ROWS = 5, N = 24 };

static void sample(int s, float *X) { /* deterministic rows of sample s */
    uint64_t z = 0x12345678ull + (uint64_t)s * 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < ROWS * N; i++) {
        z ^= z << 13; z ^= z >> 7; z ^= z << 17;
        X[i] = (float)((double)(z >> 11) / 9007199254740992.0 * 2 - 1);
    }
}

static void hessian_of(int first, int last, double *H) {
    float X[ROWS * N], scr[N * N];
    memset(H, 0, sizeof(double) * N * N);
    for (int s = first; s < last; s++) { sample(s, X); const int rows = ROWS; hessian_accum_cpu(H, X, 1, &rows, N, scr); }
}

static int child(const char *out) {
    comm_init(NULL, NULL);
    int r = comm_rank(), R = comm_size();
    double H[N * N];
    hessian_of(NSAMP * r / R, NSAMP * (r + 1) / R, H);
    double H2[N * N];
    memcpy(H2, H, sizeof H);
    comm_allreduce_sum_f64(H, N * N);
    comm_reduce_sum_f64(H2, N * N, R - 1); /* reduce to the last rank */
    int64_t cnt = NSAMP * (r + 1) / R - NSAMP * r / R;
    comm_allreduce_sum_i64(&cnt, 1);
    int mx = comm_allreduce_max_int(r == R - 1 ? 7 : 0);
    unsigned char big[3000];
    for (int i = 0; i < 3000; i++) big[i] = (unsigned char)(r == R - 1 ? i * 7 : 0);
    comm_bcast(big, sizeof big, R - 1);
    int ok = cnt == NSAMP && mx == 7;
    for (int i = 0; i < 3000; i++) ok &= big[i] == (unsigned char)(i * 7);
    if (r == R - 1) {
        for (int i = 0; i < N * N; i++) ok &= H2[i] == H[i];
        ok = comm_allreduce_max_int(!ok) == 0;
    } else
        ok = comm_allreduce_max_int(!ok) == 0;
    if (r == 0) {
        FILE *f = fopen(out, "wb");
        fwrite(&ok, sizeof ok, 1, f);
        fwrite(H, sizeof H, 1, f);
        fclose(f);
    }
    comm_finalize();
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--child") == 0) return child(argv[2]);
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun --oversubscribe";
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    double want[N * N], got[3][N * N];
    hessian_of(0, NSAMP, want);
    hessian_mirror_cpu(want, N);
    int nps[3] = {1, 2, 4};
    for (int k = 0; k < 3; k++) {
        TEST(nps[k] == 1 ? "np 1: reduced Hessian = all-sample Hessian"
             : nps[k] == 2 ? "np 2: uneven split, reduce/allreduce/bcast/max agree"
                           : "np 4: uneven split, reduce/allreduce/bcast/max agree") {
            char out[64], cmd[1024];
            snprintf(out, sizeof out, "/tmp/doneshot-test-mpi-%d-%d.bin", (int)getpid(), nps[k]);
            snprintf(cmd, sizeof cmd, "%s -np %d %s --child %s", mpirun, nps[k], argv[0], out);
            CHECK_EQ_INT(test_system(cmd), 0);
            FILE *f = fopen(out, "rb");
            int ok = 0;
            CHECK(f != NULL);
            if (f) {
                CHECK(fread(&ok, sizeof ok, 1, f) == 1 && fread(got[k], sizeof got[k], 1, f) == 1);
                fclose(f);
            }
            remove(out);
            CHECK(ok);
            hessian_mirror_cpu(got[k], N);
            CHECK_CLOSE(got[k], want, N * N, 1e-12, 1e-12);
            if (k > 0) CHECK_CLOSE(got[k], got[0], N * N, 1e-12, 1e-12);
        }
    }
    return TEST_REPORT();
}
