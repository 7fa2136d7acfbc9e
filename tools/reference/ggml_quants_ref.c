/*
 * ggml's own reference (de)quantizers as a filter, for tools/reference/ggml_quant_fixtures.py.
 *
 *     ggml_quants_ref quantize   <type> <n_per_row>  < values.f32 > blocks.bin
 *     ggml_quants_ref dequantize <type>              < blocks.bin > values.f32
 *
 * <type> is ggml's name ("f16", "q4_0", "q4_K", ...). Input and output are raw little-endian
 * bytes. `quantize` calls ggml's `quantize_row_*_ref` (what `ggml_quantize_chunk` does without
 * an importance matrix) one row at a time into a zeroed buffer, so bytes ggml leaves unwritten
 * (q8_K's bsums of an all-zero block) read as zero. `dequantize` calls ggml's
 * `dequantize_row_*` (q8_1 has none in ggml and is refused).
 *
 * Build against a whisper.cpp / llama.cpp checkout whose ggml-base library is built
 * (the fixture script does this):
 *
 *     gcc -O2 -std=gnu11 -I ggml/include -I ggml/src ggml_quants_ref.c \
 *         -L build/bin -lggml-base -Wl,-rpath,build/bin -o ggml_quants_ref
 */

#include "ggml-quants.h"
#include "ggml.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*from_float_fn)(const float *, void *, int64_t);
typedef void (*to_float_fn)(const void *, float *, int64_t);

static void copy_f32(const float * x, void * y, int64_t n) { memcpy(y, x, (size_t) n * sizeof(float)); }
static void f32_copy(const void * x, float * y, int64_t n) { memcpy(y, x, (size_t) n * sizeof(float)); }

static const struct {
    enum ggml_type type;
    from_float_fn  quantize;
    to_float_fn    dequantize;
} TABLE[] = {
    { GGML_TYPE_F32,  copy_f32,                                         f32_copy                                    },
    { GGML_TYPE_F16,  (from_float_fn) ggml_fp32_to_fp16_row,            (to_float_fn) ggml_fp16_to_fp32_row         },
    { GGML_TYPE_BF16, (from_float_fn) ggml_fp32_to_bf16_row_ref,        (to_float_fn) ggml_bf16_to_fp32_row         },
    { GGML_TYPE_Q4_0, (from_float_fn) quantize_row_q4_0_ref,            (to_float_fn) dequantize_row_q4_0           },
    { GGML_TYPE_Q4_1, (from_float_fn) quantize_row_q4_1_ref,            (to_float_fn) dequantize_row_q4_1           },
    { GGML_TYPE_Q5_0, (from_float_fn) quantize_row_q5_0_ref,            (to_float_fn) dequantize_row_q5_0           },
    { GGML_TYPE_Q5_1, (from_float_fn) quantize_row_q5_1_ref,            (to_float_fn) dequantize_row_q5_1           },
    { GGML_TYPE_Q8_0, (from_float_fn) quantize_row_q8_0_ref,            (to_float_fn) dequantize_row_q8_0           },
    { GGML_TYPE_Q8_1, (from_float_fn) quantize_row_q8_1_ref,            NULL                                        },
    { GGML_TYPE_Q2_K, (from_float_fn) quantize_row_q2_K_ref,            (to_float_fn) dequantize_row_q2_K           },
    { GGML_TYPE_Q3_K, (from_float_fn) quantize_row_q3_K_ref,            (to_float_fn) dequantize_row_q3_K           },
    { GGML_TYPE_Q4_K, (from_float_fn) quantize_row_q4_K_ref,            (to_float_fn) dequantize_row_q4_K           },
    { GGML_TYPE_Q5_K, (from_float_fn) quantize_row_q5_K_ref,            (to_float_fn) dequantize_row_q5_K           },
    { GGML_TYPE_Q6_K, (from_float_fn) quantize_row_q6_K_ref,            (to_float_fn) dequantize_row_q6_K           },
    { GGML_TYPE_Q8_K, (from_float_fn) quantize_row_q8_K_ref,            (to_float_fn) dequantize_row_q8_K           },
};

static void * read_all(size_t * len) {
    size_t cap = 1 << 16, n = 0;
    char * buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    *len = n;
    return buf;
}

static void write_all(const void * buf, size_t len) {
    if (fwrite(buf, 1, len, stdout) != len) {
        fprintf(stderr, "short write\n");
        exit(1);
    }
}

int main(int argc, char ** argv) {
    if (argc < 3 || (strcmp(argv[1], "quantize") != 0 && strcmp(argv[1], "dequantize") != 0) ||
        (strcmp(argv[1], "quantize") == 0 && argc != 4)) {
        fprintf(stderr, "usage: %s quantize <type> <n_per_row> | dequantize <type>\n", argv[0]);
        return 2;
    }
    int entry = -1;
    for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); ++i) {
        if (strcmp(ggml_type_name(TABLE[i].type), argv[2]) == 0) {
            entry = (int) i;
        }
    }
    if (entry < 0) {
        fprintf(stderr, "unknown type %s\n", argv[2]);
        return 2;
    }
    const enum ggml_type type  = TABLE[entry].type;
    const int64_t        block = ggml_blck_size(type);
    const size_t         bytes = ggml_type_size(type);

    size_t len;
    void * in = read_all(&len);

    if (strcmp(argv[1], "quantize") == 0) {
        const int64_t n_per_row = atoll(argv[3]);
        if (n_per_row <= 0 || n_per_row % block != 0 || len % (n_per_row * sizeof(float)) != 0) {
            fprintf(stderr, "bad row length %lld for %zu input bytes\n", (long long) n_per_row, len);
            return 2;
        }
        const int64_t nrows    = (int64_t) (len / (n_per_row * sizeof(float)));
        const size_t  row_size = ggml_row_size(type, n_per_row);
        char *        out      = calloc((size_t) nrows, row_size);
        for (int64_t r = 0; r < nrows; ++r) {
            TABLE[entry].quantize((const float *) in + r * n_per_row, out + r * row_size, n_per_row);
        }
        write_all(out, (size_t) nrows * row_size);
        free(out);
    } else {
        if (!TABLE[entry].dequantize) {
            fprintf(stderr, "ggml has no dequantize_row for %s\n", argv[2]);
            return 2;
        }
        if (len % bytes != 0) {
            fprintf(stderr, "%zu bytes are not whole %s blocks\n", len, argv[2]);
            return 2;
        }
        const int64_t n   = (int64_t) (len / bytes) * block;
        float *       out = malloc((size_t) n * sizeof(float));
        TABLE[entry].dequantize(in, out, n);
        write_all(out, (size_t) n * sizeof(float));
        free(out);
    }
    free(in);
    return 0;
}
