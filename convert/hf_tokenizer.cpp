// Hugging Face tokenizer files -> TokenizerData. See hf_tokenizer.h for the mapping.
#include "convert/hf_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace ds3::hf {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& msg) { throw Error("tokenizer", msg); }

json load_json(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) fail(p.string() + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    try {
        return json::parse(ss.str());
    } catch (const json::exception& e) {
        fail(p.string() + ": invalid JSON: " + e.what());
    }
}

// bos_token and friends: a string, {"content": "..."} (AddedToken form), or null.
std::optional<std::string> token_content(const json& cfg, const char* key, const fs::path& p) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return std::nullopt;
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
    fail(p.string() + ": " + key + ": expected a string or {\"content\": string}, found " +
         it->type_name());
}

bool flag(const json& cfg, const char* key, bool def, const fs::path& p) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return def;
    if (!it->is_boolean())
        fail(p.string() + ": " + key + ": expected a boolean, found " + it->type_name());
    return it->get<bool>();
}

// The normalizer must be a no-op: null, or a Sequence with no normalizers (DeepSeek-V3).
void check_normalizer(const json& tj, const fs::path& p) {
    auto it = tj.find("normalizer");
    if (it == tj.end() || it->is_null()) return;
    if (it->is_object() && it->value("type", "") == "Sequence" && it->contains("normalizers") &&
        (*it)["normalizers"].is_array() && (*it)["normalizers"].empty())
        return;
    fail(p.string() + ": unsupported normalizer " + it->dump() +
         " (ds3 supports none or an empty Sequence)");
}

// Split(Isolated) regexes followed by ByteLevel(use_regex=false) -> the pre name whose
// regexes are exactly these.
std::string detect_pre(const json& tj, const fs::path& p) {
    auto it = tj.find("pre_tokenizer");
    if (it == tj.end() || !it->is_object()) fail(p.string() + ": no pre_tokenizer");
    std::vector<json> steps;
    if (it->value("type", "") == "Sequence" && it->contains("pretokenizers") &&
        (*it)["pretokenizers"].is_array())
        steps = (*it)["pretokenizers"].get<std::vector<json>>();
    else
        steps.push_back(*it);
    std::vector<std::string> regexes;
    bool byte_level = false;
    for (const json& s : steps) {
        std::string type = s.value("type", "");
        if (byte_level) fail(p.string() + ": pre_tokenizer step after ByteLevel: " + s.dump());
        if (type == "Split") {
            bool ok = s.contains("pattern") && s["pattern"].is_object() &&
                      s["pattern"].contains("Regex") && s["pattern"]["Regex"].is_string() &&
                      s.value("behavior", "") == "Isolated" && !s.value("invert", false);
            if (!ok)
                fail(p.string() + ": unsupported Split step (need a Regex pattern, behavior "
                                  "Isolated, invert false): " + s.dump());
            regexes.push_back(s["pattern"]["Regex"].get<std::string>());
        } else if (type == "ByteLevel") {
            if (s.value("use_regex", true) || s.value("add_prefix_space", false))
                fail(p.string() + ": unsupported ByteLevel step (need use_regex false, "
                                  "add_prefix_space false): " + s.dump());
            byte_level = true;
        } else {
            fail(p.string() + ": unsupported pre_tokenizer step type '" + type + "'");
        }
    }
    if (!byte_level) fail(p.string() + ": pre_tokenizer has no ByteLevel step");
    std::string_view name = pre_tokenizer_name(regexes);
    if (name.empty()) {
        std::string list;
        for (const auto& r : regexes) list += (list.empty() ? "" : ", ") + json(r).dump();
        fail(p.string() + ": unknown pre-tokenizer regexes [" + list +
             "]; ds3 knows: deepseek-v3");
    }
    return std::string(name);
}

}  // namespace

TokenizerData read_tokenizer_dir(const std::string& dir) {
    const fs::path tok_path = fs::path(dir) / "tokenizer.json";
    const fs::path cfg_path = fs::path(dir) / "tokenizer_config.json";
    const fs::path model_cfg_path = fs::path(dir) / "config.json";
    if (!fs::exists(tok_path)) fail(tok_path.string() + ": not found");

    const json tj = load_json(tok_path);
    const json cfg = fs::exists(cfg_path) ? load_json(cfg_path) : json::object();
    if (!cfg.is_object()) fail(cfg_path.string() + ": expected a JSON object");

    TokenizerData t;
    t.model = "gpt2";

    if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object())
        fail(tok_path.string() + ": no \"model\" object");
    const json& model = tj["model"];
    if (model.value("type", "") != "BPE")
        fail(tok_path.string() + ": model.type: expected \"BPE\", found " +
             (model.contains("type") ? model["type"].dump() : std::string("nothing")));
    if (model.value("byte_fallback", false))
        fail(tok_path.string() + ": model.byte_fallback true is not supported");
    check_normalizer(tj, tok_path);
    t.pre = detect_pre(tj, tok_path);

    // id -> (text, type); std::map keeps ids ordered and catches duplicates cheaply.
    std::map<int64_t, std::pair<std::string, TokenType>> by_id;
    if (!model.contains("vocab") || !model["vocab"].is_object())
        fail(tok_path.string() + ": model.vocab: expected an object");
    for (const auto& [text, idv] : model["vocab"].items()) {
        if (!idv.is_number_integer() || idv.get<int64_t>() < 0)
            fail(tok_path.string() + ": model.vocab[" + json(text).dump() +
                 "]: expected a non-negative integer id, found " + idv.dump());
        int64_t id = idv.get<int64_t>();
        auto [it, fresh] = by_id.emplace(id, std::make_pair(text, TokenType::Normal));
        if (!fresh)
            fail(tok_path.string() + ": id " + std::to_string(id) + " used by both " +
                 json(it->second.first).dump() + " and " + json(text).dump());
    }
    if (tj.contains("added_tokens") && !tj["added_tokens"].is_null()) {
        if (!tj["added_tokens"].is_array())
            fail(tok_path.string() + ": added_tokens: expected an array");
        for (const json& a : tj["added_tokens"]) {
            if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
                a["id"].get<int64_t>() < 0 || !a.contains("content") || !a["content"].is_string())
                fail(tok_path.string() + ": added_tokens entry needs an integer id and a string "
                                         "content, found " + a.dump());
            int64_t id = a["id"].get<int64_t>();
            std::string content = a["content"].get<std::string>();
            TokenType type = a.value("special", false) ? TokenType::Control : TokenType::UserDefined;
            auto it = by_id.find(id);
            // An added token may repeat a vocab entry (DeepSeek's ids 0-2); the contents must agree.
            if (it != by_id.end() && it->second.first != content)
                fail(tok_path.string() + ": added token " + std::to_string(id) + " " +
                     json(content).dump() + " differs from vocab entry " +
                     json(it->second.first).dump());
            by_id[id] = {content, type};
        }
    }
    if (by_id.empty()) fail(tok_path.string() + ": empty vocabulary");

    int64_t n = by_id.rbegin()->first + 1;
    if (fs::exists(model_cfg_path)) {
        json mc = load_json(model_cfg_path);
        if (mc.is_object() && mc.contains("vocab_size") && mc["vocab_size"].is_number_integer()) {
            int64_t vs = mc["vocab_size"].get<int64_t>();
            if (vs < n)
                fail(model_cfg_path.string() + ": vocab_size " + std::to_string(vs) +
                     " is smaller than the tokenizer's largest id + 1 = " + std::to_string(n));
            n = vs;
        }
    }
    if (n > INT32_MAX) fail(tok_path.string() + ": id too large: " + std::to_string(n - 1));
    t.tokens.resize(static_cast<size_t>(n));
    t.types.assign(static_cast<size_t>(n), TokenType::Unused);
    for (int64_t i = 0; i < n; ++i) {
        auto it = by_id.find(i);
        if (it == by_id.end()) {
            t.tokens[i] = "[PAD" + std::to_string(i) + "]";
        } else {
            t.tokens[i] = it->second.first;
            t.types[i] = it->second.second;
        }
    }

    if (model.contains("merges") && !model["merges"].is_null()) {
        if (!model["merges"].is_array()) fail(tok_path.string() + ": model.merges: expected an array");
        const json& merges = model["merges"];
        t.merges.reserve(merges.size());
        for (const json& m : merges) {
            if (m.is_string()) {
                std::string s = m.get<std::string>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() ||
                    s.find(' ', sp + 1) != std::string::npos)
                    fail(tok_path.string() + ": merge " + m.dump() + ": expected \"a b\"");
                t.merges.push_back(std::move(s));
            } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
                t.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
            } else {
                fail(tok_path.string() + ": merge " + m.dump() +
                     ": expected \"a b\" or [\"a\", \"b\"]");
            }
        }
    }

    // Special ids: the token strings of tokenizer_config.json, looked up in the vocabulary.
    std::map<std::string, int32_t, std::less<>> index;
    for (int32_t i = 0; i < static_cast<int32_t>(n); ++i)
        if (t.types[i] != TokenType::Unused) index.emplace(t.tokens[i], i);
    auto lookup = [&](const char* key) -> std::optional<int32_t> {
        auto content = token_content(cfg, key, cfg_path);
        if (!content) return std::nullopt;
        auto it = index.find(*content);
        if (it == index.end())
            fail(cfg_path.string() + ": " + key + " " + json(*content).dump() +
                 " is not in the vocabulary");
        return it->second;
    };
    t.bos_id = lookup("bos_token");
    t.eos_id = lookup("eos_token");
    t.pad_id = lookup("pad_token");
    t.unk_id = lookup("unk_token");
    t.add_bos = flag(cfg, "add_bos_token", false, cfg_path);
    t.add_eos = flag(cfg, "add_eos_token", false, cfg_path);
    if (auto it = cfg.find("chat_template"); it != cfg.end() && !it->is_null()) {
        if (it->is_string()) {
            t.chat_template = it->get<std::string>();
        } else if (it->is_array()) {
            // Newer releases list named templates; the one named "default" is the chat template.
            for (const json& e : *it)
                if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
                    e["template"].is_string())
                    t.chat_template = e["template"].get<std::string>();
        } else {
            fail(cfg_path.string() + ": chat_template: expected a string, found " + it->type_name());
        }
    }
    return t;
}

}  // namespace ds3::hf
