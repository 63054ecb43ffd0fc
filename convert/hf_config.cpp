#include "convert/hf_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"

namespace ds3::hf {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const char* json_type(const json& v) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return "a boolean";
    if (v.is_number_unsigned()) return "a non-negative integer";
    if (v.is_number_integer()) return "a negative integer";
    if (v.is_number_float()) return "a float";
    if (v.is_string()) return "a string";
    if (v.is_array()) return "an array";
    return "an object";
}

// Typed access to one object's fields; every message names the file and the field.
struct Fields {
    const json& obj;
    std::string path;
    std::string prefix;  // "rope_scaling." for nested objects

    [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
        throw Error("config", path + ": field '" + prefix + key + "': " + msg);
    }
    const json* get(const std::string& key) const {
        auto it = obj.find(key);
        return it == obj.end() ? nullptr : &*it;
    }
    const json& need(const std::string& key) const {
        const json* v = get(key);
        if (!v) fail(key, "missing");
        return *v;
    }
    uint64_t to_u64(const std::string& key, const json& v) const {
        if (!v.is_number_unsigned()) fail(key, std::string("expected a non-negative integer, found ") + json_type(v));
        return v.get<uint64_t>();
    }
    double to_f64(const std::string& key, const json& v) const {
        if (!v.is_number()) fail(key, std::string("expected a number, found ") + json_type(v));
        return v.get<double>();
    }
    uint64_t u64(const std::string& key) const { return to_u64(key, need(key)); }
    uint64_t u64(const std::string& key, uint64_t def) const {
        const json* v = get(key);
        return v && !v->is_null() ? to_u64(key, *v) : def;
    }
    std::optional<uint64_t> opt_u64(const std::string& key) const {
        const json* v = get(key);
        if (!v || v->is_null()) return std::nullopt;
        return to_u64(key, *v);
    }
    double f64(const std::string& key) const { return to_f64(key, need(key)); }
    double f64(const std::string& key, double def) const {
        const json* v = get(key);
        return v && !v->is_null() ? to_f64(key, *v) : def;
    }
    std::optional<double> opt_f64(const std::string& key) const {
        const json* v = get(key);
        if (!v || v->is_null()) return std::nullopt;
        return to_f64(key, *v);
    }
    bool boolean(const std::string& key, bool def) const {
        const json* v = get(key);
        if (!v || v->is_null()) return def;
        if (!v->is_boolean()) fail(key, std::string("expected a boolean, found ") + json_type(*v));
        return v->get<bool>();
    }
    std::optional<bool> opt_bool(const std::string& key) const {
        const json* v = get(key);
        if (!v || v->is_null()) return std::nullopt;
        return boolean(key, false);
    }
    std::string str(const std::string& key, const std::string& def) const {
        const json* v = get(key);
        if (!v || v->is_null()) return def;
        if (!v->is_string()) fail(key, std::string("expected a string, found ") + json_type(*v));
        return v->get<std::string>();
    }
    // A token id: an integer, or a list of integers of which the first is taken.
    std::optional<int64_t> token_id(const std::string& key) const {
        const json* v = get(key);
        if (!v || v->is_null()) return std::nullopt;
        const json& x = v->is_array() && !v->empty() ? (*v)[0] : *v;
        if (!x.is_number_integer()) fail(key, std::string("expected an integer token id, found ") + json_type(x));
        return x.get<int64_t>();
    }
};

json parse_object(const std::string& text, const std::string& path) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw Error("config", path + ": not valid JSON");
    if (!j.is_object()) throw Error("config", path + ": expected a JSON object at the top level");
    return j;
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw Error("config", p.string() + ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void require_one_of(const Fields& f, const std::string& key, const std::string& value,
                    std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
        if (value == a) return;
        list += list.empty() ? "" : ", ";
        list += a;
    }
    f.fail(key, "unsupported value '" + value + "' (expected one of: " + list + ")");
}

}  // namespace

HfConfig parse_config(const std::string& json_text, const std::string& path) {
    const json j = parse_object(json_text, path);
    Fields f{j, path, ""};
    HfConfig c;

    if (const json* a = f.get("architectures")) {
        if (!a->is_array() || a->empty() || !(*a)[0].is_string())
            f.fail("architectures", "expected a non-empty array of strings");
        c.architecture = (*a)[0].get<std::string>();
    }
    c.model_type = f.str("model_type", "");
    if (c.model_type == "deepseek_v2" || (c.model_type.empty() && c.architecture == "DeepseekV2ForCausalLM"))
        c.family = Family::V2;
    else if (c.model_type == "deepseek_v3" || c.model_type == "kimi_k2" ||
             (c.model_type.empty() && c.architecture == "DeepseekV3ForCausalLM"))
        c.family = Family::V3;
    else
        throw Error("config", path + ": unsupported architecture '" + c.architecture + "' (model_type '" +
                                  c.model_type + "'); expected DeepseekV2ForCausalLM (deepseek_v2), "
                                  "DeepseekV3ForCausalLM (deepseek_v3) or kimi_k2");
    if (!c.architecture.empty() && c.architecture != "DeepseekV2ForCausalLM" &&
        c.architecture != "DeepseekV3ForCausalLM")
        throw Error("config", path + ": unsupported architecture '" + c.architecture + "' for model_type '" +
                                  c.model_type + "'");
    const bool v3 = c.family == Family::V3;

    c.hidden_size = f.u64("hidden_size");
    c.vocab_size = f.u64("vocab_size");
    c.num_hidden_layers = f.u64("num_hidden_layers");
    c.num_attention_heads = f.u64("num_attention_heads");
    c.num_key_value_heads = f.u64("num_key_value_heads", c.num_attention_heads);
    c.q_lora_rank = f.opt_u64("q_lora_rank");
    c.kv_lora_rank = f.u64("kv_lora_rank");
    c.qk_nope_head_dim = f.u64("qk_nope_head_dim");
    c.qk_rope_head_dim = f.u64("qk_rope_head_dim");
    c.v_head_dim = f.u64("v_head_dim");
    c.intermediate_size = f.u64("intermediate_size");
    c.moe_intermediate_size = f.u64("moe_intermediate_size");
    c.n_routed_experts = f.u64("n_routed_experts");
    c.n_shared_experts = f.u64("n_shared_experts", 0);
    c.num_experts_per_tok = f.u64("num_experts_per_tok");
    c.first_k_dense_replace = f.u64("first_k_dense_replace", 0);
    c.moe_layer_freq = f.u64("moe_layer_freq", 1);
    c.n_group = f.u64("n_group", 1);
    c.topk_group = f.u64("topk_group", 1);
    c.topk_method = f.str("topk_method", v3 ? "noaux_tc" : "greedy");
    c.scoring_func = f.str("scoring_func", v3 ? "sigmoid" : "softmax");
    c.norm_topk_prob = f.boolean("norm_topk_prob", false);
    c.routed_scaling_factor = f.f64("routed_scaling_factor", 1.0);
    c.rms_norm_eps = f.f64("rms_norm_eps", 1e-6);
    c.rope_theta = f.f64("rope_theta", 10000.0);
    c.max_position_embeddings = f.u64("max_position_embeddings");
    c.num_nextn_predict_layers = f.u64("num_nextn_predict_layers", 0);
    c.bos_token_id = f.token_id("bos_token_id");
    c.eos_token_id = f.token_id("eos_token_id");
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);

    require_one_of(f, "topk_method", c.topk_method, {"greedy", "group_limited_greedy", "noaux_tc"});
    require_one_of(f, "scoring_func", c.scoring_func, {"softmax", "sigmoid"});

    if (const json* rs = f.get("rope_scaling"); rs && !rs->is_null()) {
        if (!rs->is_object()) f.fail("rope_scaling", std::string("expected an object or null, found ") + json_type(*rs));
        Fields r{*rs, path, "rope_scaling."};
        RopeScaling s;
        // transformers renamed "type" to "rope_type"; releases use either.
        s.type = r.str("type", r.str("rope_type", ""));
        if (s.type.empty()) r.fail("type", "missing");
        require_one_of(r, "type", s.type, {"yarn"});
        s.factor = r.f64("factor");
        s.original_max_position_embeddings = r.u64("original_max_position_embeddings");
        s.beta_fast = r.f64("beta_fast", 32.0);
        s.beta_slow = r.f64("beta_slow", 1.0);
        s.mscale = r.f64("mscale", 1.0);
        s.mscale_all_dim = r.f64("mscale_all_dim", 0.0);
        c.rope_scaling = s;
    }

    if (const json* q = f.get("quantization_config"); q && !q->is_null()) {
        if (!q->is_object()) f.fail("quantization_config", std::string("expected an object, found ") + json_type(*q));
        Fields qf{*q, path, "quantization_config."};
        QuantConfig qc;
        qc.quant_method = qf.str("quant_method", "");
        require_one_of(qf, "quant_method", qc.quant_method, {"fp8"});
        qc.fmt = qf.str("fmt", "e4m3");
        require_one_of(qf, "fmt", qc.fmt, {"e4m3"});
        if (const json* b = qf.get("weight_block_size"); b && !b->is_null()) {
            if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number_unsigned() || !(*b)[1].is_number_unsigned() ||
                (*b)[0].get<uint64_t>() == 0 || (*b)[1].get<uint64_t>() == 0 ||
                (*b)[0].get<uint64_t>() > UINT32_MAX || (*b)[1].get<uint64_t>() > UINT32_MAX)
                qf.fail("weight_block_size", "expected two positive integers");
            qc.block_out = static_cast<uint32_t>((*b)[0].get<uint64_t>());
            qc.block_in = static_cast<uint32_t>((*b)[1].get<uint64_t>());
        }
        c.quantization_config = qc;
    }

    // Values the model cannot work with, named by field.
    auto positive = [&](const char* key, uint64_t v) {
        if (v == 0) f.fail(key, "must be positive");
    };
    positive("hidden_size", c.hidden_size);
    positive("vocab_size", c.vocab_size);
    positive("num_hidden_layers", c.num_hidden_layers);
    positive("num_attention_heads", c.num_attention_heads);
    positive("kv_lora_rank", c.kv_lora_rank);
    positive("qk_rope_head_dim", c.qk_rope_head_dim);
    positive("v_head_dim", c.v_head_dim);
    positive("moe_layer_freq", c.moe_layer_freq);
    positive("max_position_embeddings", c.max_position_embeddings);
    if (c.q_lora_rank && *c.q_lora_rank == 0) f.fail("q_lora_rank", "must be positive or null");
    if (c.n_routed_experts > 0) {
        positive("moe_intermediate_size", c.moe_intermediate_size);
        positive("n_group", c.n_group);
        if (c.num_experts_per_tok == 0 || c.num_experts_per_tok > c.n_routed_experts)
            f.fail("num_experts_per_tok", "must be in 1.." + std::to_string(c.n_routed_experts) + ", found " +
                                              std::to_string(c.num_experts_per_tok));
        if (c.n_routed_experts % c.n_group != 0)
            f.fail("n_group", std::to_string(c.n_group) + " does not divide n_routed_experts " +
                                  std::to_string(c.n_routed_experts));
        if (c.topk_group == 0 || c.topk_group > c.n_group)
            f.fail("topk_group", "must be in 1.." + std::to_string(c.n_group) + ", found " +
                                     std::to_string(c.topk_group));
    }
    if (c.first_k_dense_replace > 0) positive("intermediate_size", c.intermediate_size);
    return c;
}

HfConfig read_config(const std::string& dir) {
    const fs::path p = fs::path(dir) / "config.json";
    return parse_config(read_text(p), p.string());
}

GenerationConfig parse_generation_config(const std::string& json_text, const std::string& path) {
    const json j = parse_object(json_text, path);
    Fields f{j, path, ""};
    GenerationConfig g;
    g.temperature = f.opt_f64("temperature");
    g.top_p = f.opt_f64("top_p");
    if (const json* k = f.get("top_k"); k && !k->is_null()) {
        if (!k->is_number_integer()) f.fail("top_k", std::string("expected an integer, found ") + json_type(*k));
        g.top_k = k->get<int64_t>();
    }
    g.do_sample = f.opt_bool("do_sample");
    g.bos_token_id = f.token_id("bos_token_id");
    if (const json* e = f.get("eos_token_id"); e && !e->is_null()) {
        if (e->is_array()) {
            for (const json& x : *e) {
                if (!x.is_number_integer()) f.fail("eos_token_id", std::string("expected integers, found ") + json_type(x));
                g.eos_token_ids.push_back(x.get<int64_t>());
            }
        } else if (e->is_number_integer()) {
            g.eos_token_ids.push_back(e->get<int64_t>());
        } else {
            f.fail("eos_token_id", std::string("expected an integer or a list, found ") + json_type(*e));
        }
    }
    return g;
}

std::optional<GenerationConfig> read_generation_config(const std::string& dir) {
    const fs::path p = fs::path(dir) / "generation_config.json";
    if (!fs::exists(p)) return std::nullopt;
    return parse_generation_config(read_text(p), p.string());
}

}  // namespace ds3::hf
