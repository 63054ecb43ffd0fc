/* Compiled as C: proves ds3.h is valid C and drives the API the way an embedding
 * program would. Each function returns 0 on success or a line number on failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ds3.h"

#define EXPECT(cond)                                                            \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "capi_c_part.c:%d: %s (%s)\n", __LINE__, #cond,      \
                    ds3_last_error());                                          \
            return __LINE__;                                                    \
        }                                                                       \
    } while (0)

typedef struct {
    char text[4096];
    size_t len;
    int calls;
} collected;

static bool collect(const char *piece, size_t len, void *user) {
    collected *c = (collected *)user;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, piece, len);
        c->len += len;
        c->text[c->len] = '\0';
    }
    c->calls++;
    return true;
}

/* Token-level use: eval in one batch equals eval token by token. */
int capi_eval_consistency(const char *path) {
    ds3_model *m = NULL;
    EXPECT(ds3_model_load(path, NULL, &m) == DS3_OK);
    const int32_t n_vocab = ds3_model_n_vocab(m);
    EXPECT(n_vocab > 0 && ds3_model_n_layer(m) > 0 && ds3_model_n_embd(m) > 0);

    ds3_context_params cp = ds3_context_default_params();
    cp.n_ctx = 16;
    ds3_context *ctx = NULL;
    EXPECT(ds3_context_new(m, &cp, &ctx) == DS3_OK);
    EXPECT(ds3_context_n_ctx(ctx) == 16);

    const int32_t toks[4] = {0, 15, 27, 3};
    float *all = (float *)malloc(sizeof(float) * 4 * (size_t)n_vocab);
    float *one = (float *)malloc(sizeof(float) * (size_t)n_vocab);
    EXPECT(all && one);
    EXPECT(ds3_eval(ctx, toks, 4, true, all) == DS3_OK);
    EXPECT(ds3_context_n_past(ctx) == 4);
    EXPECT(ds3_context_reset(ctx) == DS3_OK);
    EXPECT(ds3_context_n_past(ctx) == 0);
    for (int i = 0; i < 4; ++i) {
        EXPECT(ds3_eval(ctx, toks + i, 1, false, one) == DS3_OK);
        for (int32_t v = 0; v < n_vocab; ++v) {
            float d = one[v] - all[(size_t)i * (size_t)n_vocab + (size_t)v];
            EXPECT(d < 1e-4f && d > -1e-4f);
        }
    }
    /* The context holds 4 of 16: 13 more do not fit, and say so. */
    int32_t many[13];
    for (int i = 0; i < 13; ++i) many[i] = 1;
    EXPECT(ds3_eval(ctx, many, 13, false, NULL) == DS3_ERR_CONTEXT_FULL);
    EXPECT(strstr(ds3_last_error(), "context") != NULL);
    /* A token outside the vocabulary is an error, not a crash. */
    int32_t bad = n_vocab + 5;
    EXPECT(ds3_eval(ctx, &bad, 1, false, NULL) != DS3_OK);
    EXPECT(ds3_last_error()[0] != '\0');

    free(all);
    free(one);
    ds3_context_free(ctx);
    ds3_model_free(m);
    return 0;
}

/* Argument and file errors come back as statuses with a message. */
int capi_errors(const char *missing_path) {
    ds3_model *m = (ds3_model *)1;
    EXPECT(ds3_model_load(missing_path, NULL, &m) == DS3_ERR_FILE);
    EXPECT(m == NULL);
    EXPECT(strstr(ds3_last_error(), missing_path) != NULL);
    EXPECT(ds3_model_load(NULL, NULL, &m) == DS3_ERR_INVALID_ARGUMENT);
    ds3_model_params p = ds3_model_default_params();
    p.backend = "no-such-backend";
    EXPECT(ds3_model_load(missing_path, &p, &m) != DS3_OK);
    EXPECT(ds3_context_new(NULL, NULL, NULL) == DS3_ERR_INVALID_ARGUMENT);
    EXPECT(ds3_eval(NULL, NULL, 0, false, NULL) == DS3_ERR_INVALID_ARGUMENT);
    EXPECT(ds3_context_n_past(NULL) == -1);
    ds3_model_free(NULL);
    ds3_context_free(NULL);
    EXPECT(strcmp(ds3_version(), "") != 0);
    return 0;
}

/* Text-level use on a file with a tokenizer: tokenize, template, generate, detokenize. */
int capi_text(const char *path) {
    ds3_model *m = NULL;
    EXPECT(ds3_model_load(path, NULL, &m) == DS3_OK);
    EXPECT(ds3_model_token_bos(m) >= 0 && ds3_model_token_eos(m) >= 0);

    const char *hello = "Hello, world! 你好";
    int32_t ids[64];
    size_t n = 0;
    EXPECT(ds3_tokenize(m, hello, strlen(hello), true, false, ids, 64, &n) == DS3_OK);
    EXPECT(n > 0);
    char back[128];
    size_t blen = 0;
    EXPECT(ds3_detokenize(m, ids, n, back, sizeof back, &blen) == DS3_OK);
    EXPECT(blen == strlen(hello) && strcmp(back, hello) == 0);
    /* Too small a buffer: the status says so and n_out says how much is needed. */
    size_t need = 0;
    EXPECT(ds3_tokenize(m, hello, strlen(hello), true, false, ids, 1, &need) == DS3_ERR_BUFFER_TOO_SMALL);
    EXPECT(need == n);
    EXPECT(ds3_detokenize(m, ids, n, back, 3, &need) == DS3_ERR_BUFFER_TOO_SMALL && need == blen);

    ds3_chat_message msgs[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    char rendered[1024];
    size_t rlen = 0;
    EXPECT(ds3_chat_apply_template(m, msgs, 2, true, rendered, sizeof rendered, &rlen) == DS3_OK);
    EXPECT(strstr(rendered, "Be brief.") != NULL && strstr(rendered, "Hi") != NULL);

    int32_t prompt[256];
    size_t np = 0;
    EXPECT(ds3_tokenize(m, rendered, rlen, true, false, prompt, 256, &np) == DS3_OK);

    ds3_context *ctx = NULL;
    EXPECT(ds3_context_new(m, NULL, &ctx) == DS3_OK);
    ds3_sampling_params sp = ds3_sampling_default_params(m);
    sp.seed = 42;
    sp.max_tokens = 8;
    collected a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    ds3_generate_result r;
    EXPECT(ds3_generate(ctx, prompt, np, &sp, collect, &a, &r) == DS3_OK);
    EXPECT(r.n_prompt == (int64_t)np && r.n_generated <= 8);
    EXPECT(r.reason == DS3_STOP_MAX_TOKENS || r.reason == DS3_STOP_EOS || r.reason == DS3_STOP_STRING);
    /* The same prompt again (the cache holds more, so it starts over) with the same seed
     * gives the same text. */
    EXPECT(ds3_generate(ctx, prompt, np, &sp, collect, &b, &r) == DS3_OK);
    EXPECT(a.len == b.len && memcmp(a.text, b.text, a.len) == 0);
    /* A prompt that extends what the cache holds reuses it: one sampled token is never
     * evaluated, so after a 1-token answer the cache holds exactly the shorter prompt. */
    EXPECT(ds3_context_reset(ctx) == DS3_OK);
    sp.max_tokens = 1;
    EXPECT(ds3_generate(ctx, prompt, np - 1, &sp, collect, &b, &r) == DS3_OK);
    EXPECT(r.n_reused == 0);
    EXPECT(ds3_generate(ctx, prompt, np, &sp, collect, &b, &r) == DS3_OK);
    EXPECT(r.n_reused == (int64_t)np - 1);

    ds3_context_free(ctx);
    ds3_model_free(m);
    return 0;
}
