/* The floor under strata's per-operation figures, measured in the same run.
 *
 *   floor                  start and exit: the least a whole process costs
 *   floor init DIR         make DIR/index.db, its journal and DIR/snapshots
 *   floor prepare DIR N    the system calls of a durable `strata prepare KEY
 *                          PARENT` and nothing else, snapshot directory N
 *
 * `prepare` replays what `strace strata prepare` shows a prepare must do to
 * be durable with SQLite's rollback journal (synchronous=FULL, PERSIST): take
 * the locks, check for a hot journal, read the four pages the lookups touch,
 * build the snapshot directory under a staging name and sync it, write the
 * old pages to the journal, rename the directory into place and sync
 * `snapshots/`, sync the journal (not its directory: the journal exists,
 * see src/store/vfs.rs), write the journal header and sync it, write the five changed
 * pages and sync the database, zero the journal header and sync it, unlock,
 * print the mount line. It is one transaction where strata makes two (a read
 * to validate before building, then the write), and it does no parsing,
 * SQL, path building or allocation at all: no implementation of this design
 * (SQLite's rollback journal, every step durable) does less.
 * Built static, like strata's release binary, with the C library's
 * start-up and nothing else.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char page[4096];

static void lock(int fd, short type, off_t start, off_t len) {
  struct flock f = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  fcntl(fd, F_SETLK, &f);
}

static void sync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  fsync(fd);
  close(fd);
}

static int init(const char *root) {
  char path[4096];
  snprintf(path, sizeof path, "%s/snapshots", root);
  mkdir(root, 0700);
  mkdir(path, 0700);
  /* The sizes of a store's index and journal after a few snapshots. */
  struct { const char *name; off_t size; } files[] = {{"index.db", 45056}, {"index.db-journal", 21032}};
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "%s/%s", root, files[i].name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, files[i].size)) return 1;
    fsync(fd);
    close(fd);
  }
  return 0;
}

static int prepare(const char *root, const char *n) {
  char db_path[4096], journal_path[4096], other[4200], staging[4096], final[4096];
  struct stat st;
  const off_t pending = 1073741824; /* SQLite's lock bytes */
  snprintf(db_path, sizeof db_path, "%s/index.db", root);
  snprintf(journal_path, sizeof journal_path, "%s/index.db-journal", root);

  int db = open(db_path, O_RDWR | O_CLOEXEC);
  if (db < 0) return 1;
  fstat(db, &st);
  pread(db, page, 100, 0);
  /* Shared lock, hot-journal check, the schema cookie, the reserved lock. */
  lock(db, F_RDLCK, pending, 1);
  lock(db, F_RDLCK, pending + 2, 510);
  lock(db, F_UNLCK, pending, 1);
  stat(journal_path, &st);
  int journal = open(journal_path, O_RDONLY | O_CLOEXEC);
  fstat(journal, &st);
  pread(journal, page, 1, 0);
  close(journal);
  pread(db, page, 16, 24);
  snprintf(other, sizeof other, "%s/index.db-wal", root);
  stat(other, &st);
  fstat(db, &st);
  lock(db, F_WRLCK, pending + 1, 1);
  for (int i = 0; i < 4; i++) pread(db, page, sizeof page, (off_t)i * 4096);

  /* The snapshot directory, built under a staging name and synced. */
  snprintf(staging, sizeof staging, "%s/snapshots/new-%s", root, n);
  if (mkdir(staging, 0700)) return 1;
  snprintf(other, sizeof other, "%s/fs", staging);
  mkdir(other, 0755);
  snprintf(other, sizeof other, "%s/work", staging);
  mkdir(other, 0755);
  sync_path(staging);

  /* The old pages into the journal. */
  journal = open(journal_path, O_RDWR | O_CLOEXEC);
  fstat(journal, &st);
  off_t at = 0;
  pwrite(journal, page, 512, at);
  at += 512;
  for (int i = 0; i < 4; i++, at += 4104) {
    pwrite(journal, page, 4, at);
    pwrite(journal, page, 4096, at + 4);
    pwrite(journal, page, 4, at + 4100);
  }

  /* Into place, durably, inside the transaction. */
  snprintf(final, sizeof final, "%s/snapshots/%s", root, n);
  if (rename(staging, final)) return 1;
  snprintf(other, sizeof other, "%s/snapshots", root);
  sync_path(other);

  /* Commit: exclusive lock, journal synced twice, database, journal reset. */
  lock(db, F_WRLCK, pending, 1);
  lock(db, F_WRLCK, pending + 2, 510);
  pwrite(journal, page, 4, at);
  pwrite(journal, page, 4096, at + 4);
  pwrite(journal, page, 4, at + 4100);
  fsync(journal);
  pwrite(journal, page, 12, 0);
  fsync(journal);
  for (int i = 0; i < 5; i++) pwrite(db, page, sizeof page, (off_t)i * 4096);
  fsync(db);
  memset(page, 0, 28);
  pwrite(journal, page, 28, 0);
  fsync(journal);
  lock(db, F_RDLCK, pending + 2, 510);
  lock(db, F_UNLCK, pending, 2);
  close(journal);
  lock(db, F_UNLCK, 0, 0);

  printf("mount -t overlay overlay -o index=off,workdir=%s/work,upperdir=%s/fs,"
         "lowerdir=%s/snapshots/1/fs TARGET\n", final, final, root);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 1) return 0;
  if (argc == 3 && !strcmp(argv[1], "init")) return init(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "prepare")) return prepare(argv[2], argv[3]);
  fprintf(stderr, "usage: floor | floor init DIR | floor prepare DIR N\n");
  return 2;
}
