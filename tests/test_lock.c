/*
 * test_lock.c - the output lock (checkpoint.c ckpt_lock_acquire/release):
 * one writer per output. The holder unlinks the lock file on release; a
 * process that opened the old file just before may then lock the unlinked
 * inode, and a third one creates and locks a new file: two holders. The
 * acquire verifies the inode, so the exclusion holds. Checked by several
 * processes acquiring and releasing in a loop, each creating a marker with
 * O_EXCL while it holds the lock (a second holder's O_EXCL fails).
 * Also: a lock file left by a dead process blocks nothing.
 */
#include "checkpoint.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NPROC = 4, ITERS = 3000 };

/* Returns the number of times this process saw another holder. */
static int hammer(const char *lock, const char *marker) {
    int violations = 0;
    for (int i = 0; i < ITERS; i++) {
        int fd;
        if (ckpt_lock_acquire(lock, &fd) != 0) continue; /* busy: try again */
        int m = open(marker, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (m < 0) violations++;
        else {
            close(m);
            unlink(marker);
        }
        ckpt_lock_release(lock, fd);
    }
    return violations;
}

int main(void) {
    char dir[] = "/tmp/ds-lock-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char lock[128], marker[128];
    snprintf(lock, sizeof lock, "%s/out.partial.lock", dir);
    snprintf(marker, sizeof marker, "%s/holder", dir);

    TEST("a second acquire while held is refused (EWOULDBLOCK)") {
        int fd, fd2 = -1;
        CHECK(ckpt_lock_acquire(lock, &fd) == 0);
        pid_t p = fork();
        if (p == 0) _exit(ckpt_lock_acquire(lock, &fd2) == -1 && errno == EWOULDBLOCK ? 0 : 1);
        int ws;
        waitpid(p, &ws, 0);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
        ckpt_lock_release(lock, fd);
        struct stat sb;
        CHECK(stat(lock, &sb) != 0); /* removed on release */
    }

    TEST("a lock file left by a dead process does not block") {
        int fd = open(lock, O_RDWR | O_CREAT, 0644);
        CHECK(fd >= 0);
        close(fd); /* the file exists, nobody holds it */
        int fd2;
        CHECK(ckpt_lock_acquire(lock, &fd2) == 0);
        ckpt_lock_release(lock, fd2);
    }

    TEST("mutual exclusion under contention (acquire/release races)") {
        pid_t pid[NPROC];
        for (int k = 0; k < NPROC; k++)
            if ((pid[k] = fork()) == 0) _exit(hammer(lock, marker) ? 1 : 0);
        int bad = 0;
        for (int k = 0; k < NPROC; k++) {
            int ws;
            waitpid(pid[k], &ws, 0);
            bad += !WIFEXITED(ws) || WEXITSTATUS(ws) != 0;
        }
        CHECK_EQ_INT(bad, 0);
    }

    unlink(marker);
    unlink(lock);
    rmdir(dir);
    return TEST_REPORT();
}
