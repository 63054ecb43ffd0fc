// The C API (include/ds3.h) over the C++ library: handles own the C++ objects, and every
// entry point catches at the boundary, turning exceptions into a ds3_status plus a
// thread-local message for ds3_last_error().
#include "ds3.h"

#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "models/deepseek2.h"
#include "models/runner.h"
#include "runtime/chat_template.h"
#include "runtime/error.h"
#include "runtime/generate.h"
#include "runtime/gguf/gguf.h"
#include "runtime/sampling.h"
#include "runtime/tokenizer.h"

struct ds3_model {
    ds3::gguf::File file;
    ds3::Deepseek2Model model;
    // A file without tokenizer keys still runs from token ids; the text functions then
    // fail with a message saying so.
    std::optional<ds3::Tokenizer> tok;
    std::optional<ds3::ChatTemplate> tmpl;
    std::string backend;
    int n_threads = 0;

    ds3_model(const std::string& path, std::string backend_name, int threads)
        : file(ds3::gguf::File::open(path)),
          model(ds3::load_deepseek2(path)),
          backend(std::move(backend_name)),
          n_threads(threads) {
        if (file.has("tokenizer.ggml.tokens")) {
            tok.emplace(ds3::read_tokenizer(file));
            tmpl.emplace(tok->data());
        }
    }

    const ds3::Tokenizer& tokenizer() const {
        if (!tok) throw ds3::Error("capi", file.path() + ": the file has no tokenizer (tokenizer.ggml.tokens)");
        return *tok;
    }
};

struct ds3_context {
    ds3_model* model = nullptr;
    std::unique_ptr<ds3::Backend> backend;
    std::unique_ptr<ds3::Runner> runner;
    std::unique_ptr<ds3::Generator> gen;  // created on first ds3_generate
};

namespace {

thread_local std::string g_last_error;

ds3_status fail(ds3_status s, std::string msg) {
    g_last_error = std::move(msg);
    return s;
}

// Runs f, mapping exceptions to statuses. f returns a ds3_status itself.
template <typename F>
ds3_status guarded(F&& f) {
    try {
        g_last_error.clear();
        return f();
    } catch (const ds3::Error& e) {
        const std::string& c = e.component();
        if (c == "kv_cache" || c == "generate") {
            if (e.message().find("context") != std::string::npos) return fail(DS3_ERR_CONTEXT_FULL, e.what());
        }
        if (c == "gguf" || c == "tokenizer" || c == "model" || c == "hparams")
            return fail(DS3_ERR_FILE, e.what());
        return fail(DS3_ERR_RUNTIME, e.what());
    } catch (const std::bad_alloc&) {
        return fail(DS3_ERR_OUT_OF_MEMORY, "[capi] out of memory");
    } catch (const std::exception& e) {
        return fail(DS3_ERR_RUNTIME, std::string("[capi] ") + e.what());
    } catch (...) {
        return fail(DS3_ERR_RUNTIME, "[capi] unknown error");
    }
}

ds3_status invalid(const char* fn, const char* what) {
    return fail(DS3_ERR_INVALID_ARGUMENT, std::string("[capi] ") + fn + ": " + what);
}

// Copies s into buf (NUL-terminated when it fits); *n_out = s.size().
ds3_status write_text(const std::string& s, char* buf, size_t capacity, size_t* n_out) {
    if (n_out) *n_out = s.size();
    if (!buf && capacity > 0) return invalid("text output", "buffer is NULL with a non-zero capacity");
    if (s.size() > capacity) {
        return fail(DS3_ERR_BUFFER_TOO_SMALL,
                    "[capi] output needs " + std::to_string(s.size()) + " bytes, buffer has " + std::to_string(capacity));
    }
    if (!s.empty()) std::memcpy(buf, s.data(), s.size());
    if (s.size() < capacity) buf[s.size()] = '\0';
    return DS3_OK;
}

ds3::SamplingParams to_cpp(const ds3_sampling_params& p) {
    ds3::SamplingParams s;
    s.temperature = p.temperature;
    s.top_k = p.top_k;
    s.top_p = p.top_p;
    s.min_p = p.min_p;
    s.repetition_penalty = p.repetition_penalty;
    s.presence_penalty = p.presence_penalty;
    s.frequency_penalty = p.frequency_penalty;
    s.penalty_last_n = p.penalty_last_n;
    s.seed = p.seed;
    s.max_tokens = p.max_tokens;
    for (size_t i = 0; i < p.n_stop; ++i)
        if (p.stop && p.stop[i]) s.stop.emplace_back(p.stop[i]);
    return s;
}

ds3_stop_reason to_c(ds3::StopReason r) {
    switch (r) {
        case ds3::StopReason::eos: return DS3_STOP_EOS;
        case ds3::StopReason::stop_string: return DS3_STOP_STRING;
        case ds3::StopReason::max_tokens: return DS3_STOP_MAX_TOKENS;
        case ds3::StopReason::context_full: return DS3_STOP_CONTEXT_FULL;
        case ds3::StopReason::interrupted:
        case ds3::StopReason::callback: return DS3_STOP_CALLBACK;
    }
    return DS3_STOP_CALLBACK;
}

}  // namespace

extern "C" {

const char* ds3_version(void) { return "0.1.0"; }
const char* ds3_last_error(void) { return g_last_error.c_str(); }

ds3_model_params ds3_model_default_params(void) { return ds3_model_params{nullptr, 0}; }

ds3_status ds3_model_load(const char* path, const ds3_model_params* params, ds3_model** out) {
    if (!path || !out) return invalid("ds3_model_load", "path and out must not be NULL");
    *out = nullptr;
    return guarded([&] {
        const ds3_model_params p = params ? *params : ds3_model_default_params();
        if (p.n_threads < 0) return invalid("ds3_model_load", "n_threads must be >= 0");
        const std::string backend = p.backend ? p.backend : "cpu";
        // Fail at load, not at the first context, when the backend does not exist here.
        ds3::BackendOptions bo;
        bo.n_threads = p.n_threads;
        (void)ds3::create_backend(backend, bo);
        *out = new ds3_model(path, backend, p.n_threads);
        return DS3_OK;
    });
}

void ds3_model_free(ds3_model* model) { delete model; }

int32_t ds3_model_n_vocab(const ds3_model* m) { return m ? static_cast<int32_t>(m->model.hp.n_vocab) : -1; }
int32_t ds3_model_n_layer(const ds3_model* m) { return m ? static_cast<int32_t>(m->model.layers.size()) : -1; }
int32_t ds3_model_n_embd(const ds3_model* m) { return m ? static_cast<int32_t>(m->model.hp.n_embd) : -1; }
int32_t ds3_model_token_bos(const ds3_model* m) { return m && m->tok && m->tok->data().bos_id ? *m->tok->data().bos_id : -1; }
int32_t ds3_model_token_eos(const ds3_model* m) { return m && m->tok && m->tok->data().eos_id ? *m->tok->data().eos_id : -1; }

ds3_status ds3_tokenize(const ds3_model* model, const char* text, size_t text_len, bool parse_special, bool add_bos,
                        int32_t* ids, size_t capacity, size_t* n_out) {
    if (!model || (!text && text_len > 0) || !n_out) return invalid("ds3_tokenize", "model, text and n_out must not be NULL");
    if (!ids && capacity > 0) return invalid("ds3_tokenize", "ids is NULL with a non-zero capacity");
    return guarded([&] {
        ds3::EncodeOptions o;
        o.parse_special = parse_special;
        o.add_bos = add_bos;
        const auto v = model->tokenizer().encode(std::string_view(text ? text : "", text_len), o);
        *n_out = v.size();
        if (v.size() > capacity)
            return fail(DS3_ERR_BUFFER_TOO_SMALL, "[capi] ds3_tokenize: " + std::to_string(v.size()) +
                                                      " ids do not fit in " + std::to_string(capacity));
        std::copy(v.begin(), v.end(), ids);
        return DS3_OK;
    });
}

ds3_status ds3_detokenize(const ds3_model* model, const int32_t* ids, size_t n_ids, char* text, size_t capacity,
                          size_t* n_out) {
    if (!model || (!ids && n_ids > 0)) return invalid("ds3_detokenize", "model and ids must not be NULL");
    return guarded([&] {
        const std::string s = model->tokenizer().decode(std::span<const int32_t>(ids, n_ids));
        return write_text(s, text, capacity, n_out);
    });
}

ds3_status ds3_chat_apply_template(const ds3_model* model, const ds3_chat_message* messages, size_t n_messages,
                                   bool add_generation_prompt, char* text, size_t capacity, size_t* n_out) {
    if (!model || (!messages && n_messages > 0)) return invalid("ds3_chat_apply_template", "model and messages must not be NULL");
    return guarded([&] {
        model->tokenizer();  // the template comes with the tokenizer keys
        std::vector<ds3::ChatMessage> msgs;
        for (size_t i = 0; i < n_messages; ++i) {
            if (!messages[i].role || !messages[i].content)
                return invalid("ds3_chat_apply_template", "a message has a NULL role or content");
            msgs.push_back({messages[i].role, messages[i].content});
        }
        return write_text(model->tmpl->render(msgs, add_generation_prompt), text, capacity, n_out);
    });
}

ds3_context_params ds3_context_default_params(void) { return ds3_context_params{4096}; }

ds3_status ds3_context_new(ds3_model* model, const ds3_context_params* params, ds3_context** out) {
    if (!model || !out) return invalid("ds3_context_new", "model and out must not be NULL");
    *out = nullptr;
    return guarded([&] {
        const ds3_context_params p = params ? *params : ds3_context_default_params();
        if (p.n_ctx <= 0) return invalid("ds3_context_new", "n_ctx must be > 0");
        auto ctx = std::make_unique<ds3_context>();
        ctx->model = model;
        ds3::BackendOptions bo;
        bo.n_threads = model->n_threads;
        ctx->backend = ds3::create_backend(model->backend, bo);
        ctx->runner = std::make_unique<ds3::Runner>(model->model, std::vector<ds3::Backend*>{ctx->backend.get()}, p.n_ctx);
        *out = ctx.release();
        return DS3_OK;
    });
}

void ds3_context_free(ds3_context* ctx) { delete ctx; }

ds3_status ds3_context_reset(ds3_context* ctx) {
    if (!ctx) return invalid("ds3_context_reset", "ctx is NULL");
    return guarded([&] {
        if (ctx->gen) ctx->gen->reset();
        ctx->runner->reset();
        return DS3_OK;
    });
}

int64_t ds3_context_n_past(const ds3_context* ctx) { return ctx ? ctx->runner->n_past() : -1; }
int64_t ds3_context_n_ctx(const ds3_context* ctx) { return ctx ? ctx->runner->cache().n_ctx() : -1; }

ds3_status ds3_eval(ds3_context* ctx, const int32_t* tokens, size_t n_tokens, bool all_logits, float* logits) {
    if (!ctx || !tokens || n_tokens == 0) return invalid("ds3_eval", "ctx and tokens must not be NULL, n_tokens > 0");
    return guarded([&] {
        // The Generator tracks what the cache holds; a direct eval invalidates that.
        ctx->gen.reset();
        const auto out = ctx->runner->eval(std::span<const int32_t>(tokens, n_tokens), all_logits);
        if (logits) std::copy(out.begin(), out.end(), logits);
        return DS3_OK;
    });
}

ds3_sampling_params ds3_sampling_default_params(const ds3_model* model) {
    ds3::SamplingParams s;
    if (model) {
        try {
            s = ds3::sampling_defaults(model->file);
        } catch (...) {
            // keep ds3's defaults when the file's are unreadable
        }
    }
    ds3_sampling_params p{};
    p.temperature = s.temperature;
    p.top_k = s.top_k;
    p.top_p = s.top_p;
    p.min_p = s.min_p;
    p.repetition_penalty = s.repetition_penalty;
    p.presence_penalty = s.presence_penalty;
    p.frequency_penalty = s.frequency_penalty;
    p.penalty_last_n = s.penalty_last_n;
    p.seed = s.seed;
    p.max_tokens = s.max_tokens;
    p.stop = nullptr;
    p.n_stop = 0;
    return p;
}

ds3_status ds3_generate(ds3_context* ctx, const int32_t* prompt, size_t n_prompt, const ds3_sampling_params* params,
                        ds3_text_callback on_text, void* user_data, ds3_generate_result* result) {
    if (!ctx || !prompt || n_prompt == 0) return invalid("ds3_generate", "ctx and prompt must not be NULL, n_prompt > 0");
    return guarded([&] {
        const ds3_sampling_params cp = params ? *params : ds3_sampling_default_params(ctx->model);
        ds3::SamplingParams sp = to_cpp(cp);
        ds3::validate(sp);
        if (!ctx->gen) ctx->gen = std::make_unique<ds3::Generator>(*ctx->runner, ctx->model->tokenizer());
        ds3::Sampler sampler(sp);
        const auto r = ctx->gen->generate(
            std::span<const int32_t>(prompt, n_prompt), sampler, [&](std::string_view piece) {
                return on_text ? on_text(piece.data(), piece.size(), user_data) : true;
            });
        if (result) {
            result->reason = to_c(r.reason);
            result->n_prompt = r.stats.n_prompt;
            result->n_reused = r.stats.n_reused;
            result->n_generated = r.stats.n_gen;
            result->prompt_seconds = r.stats.prompt_s;
            result->gen_seconds = r.stats.gen_s;
        }
        return DS3_OK;
    });
}

}  // extern "C"
