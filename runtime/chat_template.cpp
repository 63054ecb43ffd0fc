// ChatTemplate over the Jinja subset of runtime/jinja/ (ast.h gives the overview): the
// file's template or the built-in DeepSeek-V3 one, and the messages-file reader.
#include "runtime/chat_template.h"

#include "runtime/error.h"
#include "runtime/jinja/interp.h"
#include "runtime/jinja/parser.h"

namespace ds3 {

using ojson = nlohmann::ordered_json;
using jinja::fail;
using jinja::V;

struct ChatTemplate::Program {
    jinja::Body body;
};

std::shared_ptr<const ChatTemplate::Program> ChatTemplate::compile(const std::string& src) {
    auto p = std::make_shared<ChatTemplate::Program>();
    p->body = jinja::parse_template(src);
    return p;
}

const std::string& ChatTemplate::deepseek_v3_source() {
    static const std::string s =
        "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
        "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
        "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
        "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
        "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}"
        "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}"
        "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}"
        "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
        "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
        "tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + "
        "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + "
        "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
        "tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
        "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
        "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
        "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
        "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
        "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
        "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
        "{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + "
        "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}"
        "{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}"
        "{{'<｜Assistant｜>'}}{% endif %}";
    return s;
}

ChatTemplate::ChatTemplate(const TokenizerData& t) {
    auto text_of = [&](const std::optional<int32_t>& id) -> std::string {
        if (id && *id >= 0 && static_cast<size_t>(*id) < t.tokens.size()) return t.tokens[*id];
        return "";
    };
    bos_ = text_of(t.bos_id);
    eos_ = text_of(t.eos_id);
    if (t.chat_template.empty()) {
        warning_ = "the file has no chat template; using DeepSeek-V3's";
    } else {
        try {
            prog_ = compile(t.chat_template);
            return;
        } catch (const Error& e) {
            warning_ = "the file's chat template is outside ds3's Jinja subset (" + e.message() +
                       "); using DeepSeek-V3's";
        }
    }
    fallback_ = true;
    prog_ = compile(deepseek_v3_source());
}

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token)
    : prog_(compile(source)), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {}

ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render_json(const ojson& messages, bool add_generation_prompt, const ojson& extra) const {
    if (!messages.is_array()) fail("messages: expected an array");
    jinja::Scope globals;
    globals["messages"] = V(messages);
    globals["bos_token"] = V(bos_);
    globals["eos_token"] = V(eos_);
    globals["add_generation_prompt"] = V(add_generation_prompt);
    if (extra.is_object())
        for (auto it = extra.begin(); it != extra.end(); ++it) globals[it.key()] = V(it.value());
    return jinja::render(prog_->body, std::move(globals));
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
    ojson msgs = ojson::array();
    for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    return render_json(msgs, add_generation_prompt);
}

ojson parse_messages(const std::string& json_text) {
    ojson j;
    try {
        j = ojson::parse(json_text);
    } catch (const ojson::exception& e) {
        fail(std::string("messages: invalid JSON: ") + e.what());
    }
    if (!j.is_array()) fail(std::string("messages: expected a JSON array of {\"role\", \"content\"}, found ") + j.type_name());
    for (size_t i = 0; i < j.size(); ++i) {
        const ojson& m = j[i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
            fail("messages[" + std::to_string(i) + "]: expected an object with a string \"role\"");
        if (!m.contains("content") || !(m["content"].is_string() || m["content"].is_null()))
            fail("messages[" + std::to_string(i) + "]: expected a string (or null) \"content\"");
    }
    return j;
}

}  // namespace ds3
