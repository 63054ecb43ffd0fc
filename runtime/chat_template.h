// Chat templates: turn a conversation into the prompt text the model was trained on, byte
// for byte as `transformers.apply_chat_template` renders the model's own `chat_template`.
//
// ds3 interprets the template stored in the file (tokenizer.chat_template) with a small
// Jinja2 subset, configured as transformers configures Jinja (trim_blocks, lstrip_blocks,
// `tojson` without ASCII escaping, `raise_exception`). The subset covers what the DeepSeek
// templates use (V3, R1 and its `</think>` stripping, V3.1's thinking/non-thinking
// prefixes): text, {{ }}, {% if/elif/else %}, {% for %} (with `loop.*`, `else`, an `if`
// filter, break/continue), {% set %} including `namespace()` attributes, {% macro %} and
// {% set %}...{% endset %} blocks, {# #}, whitespace control, the usual operators, tests and
// filters, and the string/dict methods templates call. docs/tokenizer.md lists it.
//
// Fallback: a file with no template, or one that uses something outside the subset, is
// rendered with DeepSeek-V3's template (built in); warning() says why, and the CLI prints it.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/tokenizer_data.h"

namespace ds3 {

struct ChatMessage {
    std::string role;     // "system", "user", "assistant", "tool"
    std::string content;
};

class ChatTemplate {
public:
    // The template of `t` (falls back as described above), with bos_token/eos_token taken
    // from its special ids.
    explicit ChatTemplate(const TokenizerData& t);
    // An explicit template source. Throws Error("template", ...) when it does not parse;
    // no fallback here, so tests and tools see the real problem.
    ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token);
    ChatTemplate(ChatTemplate&&) noexcept;
    ChatTemplate& operator=(ChatTemplate&&) noexcept;
    ~ChatTemplate();

    std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
    // Messages as JSON objects (so assistant `tool_calls`, `content: null` and extra keys pass
    // through), and extra template variables (e.g. {"thinking": true} for V3.1). Throws
    // Error("template", ...) on a runtime error, including the template's raise_exception().
    std::string render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                            const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

    bool is_fallback() const { return fallback_; }
    const std::string& warning() const { return warning_; }  // empty when the file's own is used

    // DeepSeek-V3's template (the fixtures' tokenizer_config.json), used as the fallback.
    static const std::string& deepseek_v3_source();

private:
    struct Program;
    static std::shared_ptr<const Program> compile(const std::string& src);
    std::shared_ptr<const Program> prog_;
    std::string bos_, eos_;
    bool fallback_ = false;
    std::string warning_;
};

// Reads a messages file: a JSON array of {"role", "content", ...} objects. Throws
// Error("template", ...) naming the entry that is malformed.
nlohmann::ordered_json parse_messages(const std::string& json_text);

}  // namespace ds3
