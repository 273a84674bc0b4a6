/* Run an ORT-format recommender model with the ONNX Runtime C API.
 *
 * usage: run_ort MODEL IDS_FILE [TIMING_RUNS]
 *   MODEL      .ort (or .onnx) file with one int32 input [batch, maxlen] and one float output
 *   IDS_FILE   int32 ids, one row of maxlen per line (every line the same length)
 *   TIMING_RUNS optional: after printing scores, time this many batch-1 runs of the first row and
 *              print the median latency in ms to stderr
 * Prints one line of scores (%.7g, space separated) per input row, each row run alone (batch 1).
 * One intra-op thread.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "onnxruntime_c_api.h"

static const OrtApi *api;
static int64_t SEQ; /* maxlen: the length of the first row */

static void check(OrtStatus *st) {
  if (st) {
    fprintf(stderr, "ORT error: %s\n", api->GetErrorMessage(st));
    api->ReleaseStatus(st);
    exit(1);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* run the model on `rows` rows of ids; returns the output value (caller releases) */
static OrtValue *run(OrtSession *sess, OrtMemoryInfo *mem, int32_t *ids, int64_t rows,
                     const char *in_name, const char *out_name) {
  int64_t shape[2] = {rows, SEQ};
  OrtValue *in = NULL, *out = NULL;
  check(api->CreateTensorWithDataAsOrtValue(mem, ids, (size_t)(rows * SEQ) * sizeof(int32_t), shape, 2,
                                            ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, &in));
  check(api->Run(sess, NULL, &in_name, (const OrtValue *const *)&in, 1, &out_name, 1, &out));
  api->ReleaseValue(in);
  return out;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL IDS_FILE [TIMING_RUNS]\n", argv[0]);
    return 2;
  }
  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);

  /* read ids: one row per line */
  FILE *f = fopen(argv[2], "r");
  if (!f) { perror(argv[2]); return 1; }
  size_t n = 0, cap = 1024;
  int32_t *ids = malloc(cap * sizeof *ids);
  int64_t rows = 0;
  char line[65536];
  while (fgets(line, sizeof line, f)) {
    size_t before = n;
    char *p = line, *end;
    for (long v = strtol(p, &end, 10); end != p; v = strtol(p, &end, 10)) {
      if (n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
      ids[n++] = (int32_t)v;
      p = end;
    }
    if (n == before) continue; /* blank line */
    if (rows == 0) SEQ = (int64_t)(n - before);
    if ((int64_t)(n - before) != SEQ) {
      fprintf(stderr, "%s:%lld: %zu ids, the first row has %lld\n", argv[2], (long long)rows + 1, n - before,
              (long long)SEQ);
      return 1;
    }
    rows++;
  }
  fclose(f);
  if (rows == 0) { fprintf(stderr, "%s: no ids\n", argv[2]); return 1; }

  OrtEnv *env;
  OrtSessionOptions *opts;
  OrtSession *sess;
  check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "run_ort", &env));
  check(api->CreateSessionOptions(&opts));
  check(api->SetIntraOpNumThreads(opts, 1));
  check(api->SetInterOpNumThreads(opts, 1));
  check(api->CreateSession(env, argv[1], opts, &sess));

  OrtAllocator *alloc;
  char *in_name, *out_name;
  check(api->GetAllocatorWithDefaultOptions(&alloc));
  check(api->SessionGetInputName(sess, 0, alloc, &in_name));
  check(api->SessionGetOutputName(sess, 0, alloc, &out_name));
  OrtMemoryInfo *mem;
  check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem));

  /* scores, one row at a time (batch 1, as an app asks): with dynamic int8 quantisation a row's
     scores depend on the other rows of its batch */
  for (int64_t r = 0; r < rows; r++) {
    OrtValue *out = run(sess, mem, ids + r * SEQ, 1, in_name, out_name);
    OrtTensorTypeAndShapeInfo *info;
    size_t cols;
    float *scores;
    check(api->GetTensorTypeAndShape(out, &info));
    check(api->GetTensorShapeElementCount(info, &cols));
    api->ReleaseTensorTypeAndShapeInfo(info);
    check(api->GetTensorMutableData(out, (void **)&scores));
    for (size_t c = 0; c < cols; c++) printf("%.7g%c", scores[c], c + 1 == cols ? '\n' : ' ');
    api->ReleaseValue(out);
  }

  /* optional latency: batch of 1 (first row) */
  int runs = argc > 3 ? atoi(argv[3]) : 0;
  if (runs > 0) {
    double *t = malloc(runs * sizeof *t);
    for (int i = 0; i < 20; i++) api->ReleaseValue(run(sess, mem, ids, 1, in_name, out_name)); /* warm-up */
    for (int i = 0; i < runs; i++) {
      double t0 = now_ms();
      OrtValue *o = run(sess, mem, ids, 1, in_name, out_name);
      t[i] = now_ms() - t0;
      api->ReleaseValue(o);
    }
    qsort(t, runs, sizeof *t, cmp_double);
    fprintf(stderr, "batch-1 latency over %d runs: median %.4f ms, p90 %.4f ms\n", runs, t[runs / 2],
            t[(int)(runs * 0.9)]);
    free(t);
  }

  alloc->Free(alloc, in_name);
  alloc->Free(alloc, out_name);
  api->ReleaseMemoryInfo(mem);
  api->ReleaseSession(sess);
  api->ReleaseSessionOptions(opts);
  api->ReleaseEnv(env);
  free(ids);
  return 0;
}
