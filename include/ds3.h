/* ds3.h — the stable C API of ds3, for programs that embed the runtime.
 *
 * Opaque handles, <noun>_<verb> names, sized integer types. No function throws or
 * aborts on bad input: each returns a ds3_status, and ds3_last_error() gives the one-line
 * message of the last failure on the calling thread ("[gguf] model.gguf: bad magic").
 *
 *   ds3_model *model;
 *   if (ds3_model_load("model.gguf", NULL, &model) != DS3_OK) puts(ds3_last_error());
 *   ds3_context *ctx;
 *   ds3_context_new(model, NULL, &ctx);
 *   int32_t ids[256]; size_t n;
 *   ds3_tokenize(model, "Hello", 5, true, true, ids, 256, &n);
 *   ds3_sampling_params sp = ds3_sampling_default_params(model);
 *   ds3_generate(ctx, ids, n, &sp, on_text, user_data, NULL);
 *   ds3_context_free(ctx);
 *   ds3_model_free(model);
 *
 * Threads: a model may be shared by several contexts; one context is used by one thread
 * at a time. Strings are UTF-8 and never need to be NUL-terminated on input (lengths are
 * given); output strings are written NUL-terminated when they fit.
 */
#ifndef DS3_H
#define DS3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DS3_API __attribute__((visibility("default")))
#else
#define DS3_API
#endif

typedef enum ds3_status {
    DS3_OK = 0,
    DS3_ERR_INVALID_ARGUMENT = 1, /* a NULL handle, an out-of-range value */
    DS3_ERR_FILE = 2,             /* the file cannot be read or is not a valid model */
    DS3_ERR_CONTEXT_FULL = 3,     /* the tokens do not fit in the context */
    DS3_ERR_BUFFER_TOO_SMALL = 4, /* the output did not fit; *n_out says how much is needed */
    DS3_ERR_OUT_OF_MEMORY = 5,
    DS3_ERR_RUNTIME = 6           /* anything else; ds3_last_error() says what */
} ds3_status;

typedef struct ds3_model ds3_model;
typedef struct ds3_context ds3_context;

/* "0.1.0" */
DS3_API const char *ds3_version(void);
/* The message of the last failed call on this thread ("" when none). Valid until the next
 * call into ds3 on this thread. */
DS3_API const char *ds3_last_error(void);

/* ---- models -------------------------------------------------------------------- */

typedef struct ds3_model_params {
    const char *backend; /* "cpu" (default when NULL), "cuda", ... */
    int32_t n_threads;   /* CPU threads; 0 = all */
} ds3_model_params;

DS3_API ds3_model_params ds3_model_default_params(void);
/* Maps and validates a GGUF file of architecture deepseek2; params may be NULL. */
DS3_API ds3_status ds3_model_load(const char *path, const ds3_model_params *params, ds3_model **out);
DS3_API void ds3_model_free(ds3_model *model);

DS3_API int32_t ds3_model_n_vocab(const ds3_model *model);
DS3_API int32_t ds3_model_n_layer(const ds3_model *model);
DS3_API int32_t ds3_model_n_embd(const ds3_model *model);
/* Special ids, or -1 when the file has none. */
DS3_API int32_t ds3_model_token_bos(const ds3_model *model);
DS3_API int32_t ds3_model_token_eos(const ds3_model *model);

/* ---- tokenizer ----------------------------------------------------------------- */

/* Text -> ids. parse_special: match special tokens written in the text (turn it off for
 * untrusted text). add_bos: prepend BOS when the file has one. Writes up to `capacity` ids;
 * *n_out is the number of ids (needed, when DS3_ERR_BUFFER_TOO_SMALL). */
DS3_API ds3_status ds3_tokenize(const ds3_model *model, const char *text, size_t text_len, bool parse_special,
                                bool add_bos, int32_t *ids, size_t capacity, size_t *n_out);
/* Ids -> UTF-8 text (invalid sequences become U+FFFD). *n_out is the text's length in
 * bytes, without the NUL written after it when it fits. */
DS3_API ds3_status ds3_detokenize(const ds3_model *model, const int32_t *ids, size_t n_ids, char *text,
                                  size_t capacity, size_t *n_out);

typedef struct ds3_chat_message {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* NUL-terminated */
} ds3_chat_message;

/* Renders a conversation with the file's chat template (or the built-in DeepSeek-V3 one
 * when the file has none it can run). Output as for ds3_detokenize. */
DS3_API ds3_status ds3_chat_apply_template(const ds3_model *model, const ds3_chat_message *messages, size_t n_messages,
                                           bool add_generation_prompt, char *text, size_t capacity, size_t *n_out);

/* ---- contexts: a KV cache and the evaluation state ---------------------------- */

typedef struct ds3_context_params {
    int64_t n_ctx; /* context size in tokens (the latent KV cache); default 4096 */
} ds3_context_params;

DS3_API ds3_context_params ds3_context_default_params(void);
DS3_API ds3_status ds3_context_new(ds3_model *model, const ds3_context_params *params, ds3_context **out);
DS3_API void ds3_context_free(ds3_context *ctx);
/* Forgets every token: the next eval starts at position 0. */
DS3_API ds3_status ds3_context_reset(ds3_context *ctx);
/* Tokens evaluated so far. */
DS3_API int64_t ds3_context_n_past(const ds3_context *ctx);
DS3_API int64_t ds3_context_n_ctx(const ds3_context *ctx);

/* Appends tokens to the sequence and computes logits. logits may be NULL; otherwise it
 * receives n_tokens * n_vocab floats (all_logits) or n_vocab floats (the last token's). */
DS3_API ds3_status ds3_eval(ds3_context *ctx, const int32_t *tokens, size_t n_tokens, bool all_logits, float *logits);

/* ---- generation ---------------------------------------------------------------- */

typedef struct ds3_sampling_params {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    float presence_penalty;   /* 0: off */
    float frequency_penalty;  /* 0: off */
    int32_t penalty_last_n;   /* window of the penalties; -1: all */
    uint64_t seed;            /* same seed, same prompt: same text */
    int32_t max_tokens;       /* -1: until end of generation or a full context */
    const char *const *stop;  /* stop strings (NUL-terminated), may be NULL */
    size_t n_stop;
} ds3_sampling_params;

/* The file's generation defaults (temperature, top_p, top_k) over ds3's own. */
DS3_API ds3_sampling_params ds3_sampling_default_params(const ds3_model *model);

/* Receives each piece of generated text as soon as it is final; return false to stop. */
typedef bool (*ds3_text_callback)(const char *piece, size_t len, void *user_data);

typedef enum ds3_stop_reason {
    DS3_STOP_EOS = 0,
    DS3_STOP_STRING = 1,
    DS3_STOP_MAX_TOKENS = 2,
    DS3_STOP_CONTEXT_FULL = 3,
    DS3_STOP_CALLBACK = 4
} ds3_stop_reason;

typedef struct ds3_generate_result {
    ds3_stop_reason reason;
    int64_t n_prompt;      /* prompt tokens */
    int64_t n_reused;      /* of which were already in the context's cache */
    int64_t n_generated;   /* tokens generated */
    double prompt_seconds; /* time evaluating the prompt */
    double gen_seconds;    /* time generating */
} ds3_generate_result;

/* Generates after `prompt`, the whole sequence so far (e.g. a rendered conversation).
 * When it extends what an earlier ds3_generate on this context left in the cache (the
 * previous turn of a chat), only the new part is evaluated; otherwise the cache starts
 * over (so does it after a ds3_eval). Needs the file's tokenizer. result may be NULL. */
DS3_API ds3_status ds3_generate(ds3_context *ctx, const int32_t *prompt, size_t n_prompt,
                                const ds3_sampling_params *params, ds3_text_callback on_text, void *user_data,
                                ds3_generate_result *result);

#ifdef __cplusplus
}
#endif

#endif /* DS3_H */
