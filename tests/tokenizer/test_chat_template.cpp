// The Jinja-subset chat-template interpreter: the DeepSeek templates (V3 from the fixtures,
// R1's </think> stripping, V3.1-style thinking switches), Jinja semantics that matter for
// byte exactness (trim_blocks, lstrip_blocks, whitespace control), and clear errors.
#include <catch2/catch.hpp>

#include "common.h"
#include "runtime/chat_template.h"
#include "runtime/error.h"
#include "tok_fixture.h"

using namespace ds3;
using ojson = nlohmann::ordered_json;

namespace {
std::string render(const std::string& src, const ojson& msgs, bool gen = false, const ojson& extra = ojson::object()) {
    ChatTemplate t(src, "<s>", "</s>");
    return t.render_json(msgs, gen, extra);
}
const std::string BOS = "<｜begin▁of▁sentence｜>";
}  // namespace

TEST_CASE("the built-in fallback is exactly the fixtures' DeepSeek-V3 template", "[template][golden]") {
    DS3_REQUIRE_FIXTURES(fx);
    CHECK(ds3::test::realvocab_data(fx).chat_template == ChatTemplate::deepseek_v3_source());
    ChatTemplate t(ds3::test::realvocab_data(fx));
    CHECK(!t.is_fallback());
    CHECK(t.warning().empty());
}

TEST_CASE("DeepSeek-V3 template: systems joined, tool calls and outputs", "[template]") {
    ChatTemplate t(ChatTemplate::deepseek_v3_source(), BOS, "<｜end▁of▁sentence｜>");
    ojson msgs = ojson::parse(R"([
      {"role":"system","content":"A"},{"role":"system","content":"B"},
      {"role":"user","content":"weather?"},
      {"role":"assistant","content":null,"tool_calls":[
         {"type":"function","function":{"name":"get","arguments":"{\"c\":1}"}},
         {"type":"function","function":{"name":"get2","arguments":"{}"}}]},
      {"role":"tool","content":"sunny"},{"role":"tool","content":"warm"},
      {"role":"assistant","content":"It is sunny."}])");
    std::string want = BOS + "A\n\nB<｜User｜>weather?"
        "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{\"c\":1}\n```<｜tool▁call▁end｜>"
        "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get2\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>"
        "\n<｜tool▁output▁begin｜>warm<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>It is sunny.<｜end▁of▁sentence｜>";
    CHECK(t.render_json(msgs, true) == want + "<｜Assistant｜>");
    // Ending on a tool output: the outputs close and no generation prompt follows.
    ojson tail = ojson::parse(R"([{"role":"user","content":"q"},{"role":"tool","content":"r"}])");
    CHECK(t.render_json(tail, true) ==
          BOS + "<｜User｜>q<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
}

TEST_CASE("R1 template: earlier reasoning is stripped, the prompt opens <think>", "[template]") {
    // DeepSeek-R1's assistant branch and generation prompt.
    const std::string r1 =
        "{{bos_token}}{%- for message in messages %}{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}"
        "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}"
        "{% set content = message['content'] %}{% if '</think>' in content %}"
        "{% set content = content.split('</think>')[-1] %}{% endif %}"
        "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
        "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}";
    ChatTemplate t(r1, BOS, "");
    ojson msgs = ojson::parse(R"([{"role":"user","content":"1+1?"},
        {"role":"assistant","content":"<think>\nadd\n</think>\n\n2"},{"role":"user","content":"2+2?"}])");
    CHECK(t.render_json(msgs, true) ==
          BOS + "<｜User｜>1+1?<｜Assistant｜>\n\n2<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n");
}

TEST_CASE("V3.1-style thinking switch through extra variables", "[template]") {
    const std::string v31 =
        "{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<｜Assistant｜>{% if thinking %}<think>{% else %}</think>{% endif %}{% endif %}";
    ChatTemplate t(v31, BOS, "");
    ojson msgs = ojson::parse(R"([{"role":"user","content":"hi"}])");
    CHECK(t.render_json(msgs, true) == BOS + "<｜User｜>hi<｜Assistant｜></think>");
    CHECK(t.render_json(msgs, true, {{"thinking", true}}) == BOS + "<｜User｜>hi<｜Assistant｜><think>");
}

TEST_CASE("Jinja whitespace: trim_blocks, lstrip_blocks and - markers", "[template]") {
    ojson msgs = ojson::parse(R"([{"role":"user","content":"a"},{"role":"user","content":"b"}])");
    // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
    CHECK(render("{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n", msgs) ==
          "[a]\n[b]\n");
    // Expressions are not blocks: their newline stays.
    CHECK(render("{{ 'x' }}\n{{ 'y' }}", msgs) == "x\ny");
    CHECK(render("a   {%- if true -%}   b   {%- endif %}", msgs) == "ab");
    CHECK(render("  {{- 'x' -}}  \n y", msgs) == "xy");
    CHECK(render("{# comment #}\nz", msgs) == "z");
    CHECK(render("q {% if true %}w{% endif %}", msgs) == "q w");  // not at a line start: kept
}

TEST_CASE("Jinja expressions, filters, tests, loops and macros", "[template]") {
    ojson msgs = ojson::parse(R"([{"role":"user","content":"  Hi There  "},{"role":"assistant","content":"ok"}])");
    CHECK(render("{{ messages|length }} {{ messages[-1].content }} {{ messages[0]['content']|trim }}", msgs) == "2 ok Hi There");
    CHECK(render("{% for m in messages %}{{ loop.index }}/{{ loop.length }}{% if not loop.last %},{% endif %}{% endfor %}", msgs) ==
          "1/2,2/2");
    CHECK(render("{% for m in messages if m.role == 'assistant' %}{{ m.content }}{% else %}none{% endfor %}", msgs) == "ok");
    CHECK(render("{% for m in [] %}x{% else %}empty{% endfor %}", msgs) == "empty");
    CHECK(render("{{ 'a,b,c'.split(',')[1:] }} {{ 'abc'[::-1] }} {{ 'x' ~ 1 ~ none }}", msgs) == "['b', 'c'] cba x1None");
    CHECK(render("{{ {'k': [1, 2.5, true, none, 'é']}|tojson }}", msgs) == "{\"k\": [1, 2.5, true, null, \"é\"]}");
    CHECK(render("{{ {'a': 1}|tojson(indent=2) }}", msgs) == "{\n  \"a\": 1\n}");
    CHECK(render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", msgs) == "2");
    CHECK(render("{% set x = 1 %}{% for m in messages %}{% set x = 5 %}{% endfor %}{{ x }}", msgs) == "1");  // loop scope
    CHECK(render("{% macro tag(n, v='d') %}<{{ n }}={{ v }}>{% endmacro %}{{ tag('a') }}{{ tag('b', 'e') }}", msgs) == "<a=d><b=e>");
    CHECK(render("{% set s %}in{{ 1 + 2 }}{% endset %}[{{ s }}]", msgs) == "[in3]");
    CHECK(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 1 / 2 }} {{ 2 * 3 }}", msgs) == "3 -4 1 0.5 6");
    CHECK(render("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ x|default('dflt') }}", msgs) ==
          "False True True dflt");
    CHECK(render("{{ 'yes' if 'i' in 'Hi' else 'no' }} {{ 3 not in [1, 2] }} {{ 'b' in {'b': 1} }}", msgs) == "yes True True");
    CHECK(render("{{ messages[0].get('name', 'anon') }} {{ ' a b '.strip().upper() }} {{ 'ab'.startswith('a') }}", msgs) ==
          "anon A B True");
    CHECK(render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
                 msgs) == "02");
    CHECK(render("{{ bos_token }}{{ eos_token }}{{ undefined_var }}", msgs) == "<s></s>");
    CHECK(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}", msgs) == "a1b2");
    CHECK(render("{{ ['x', 'y']|join('-') }} {{ [3, 4]|first }} {{ [3, 4]|last }}", msgs) == "x-y 3 4");
}

TEST_CASE("template errors are clear, and a bad stored template falls back", "[template][errors]") {
    ojson msgs = ojson::parse(R"([{"role":"user","content":"x"}])");
    CHECK_THROWS_WITH(ChatTemplate("{% if true %}x", "", ""), Catch::Contains("[template]") && Catch::Contains("endif"));
    CHECK_THROWS_WITH(ChatTemplate("{{ 'x' ", "", ""), Catch::Contains("unclosed"));
    CHECK_THROWS_WITH(ChatTemplate("{% include 'x' %}", "", ""), Catch::Contains("unsupported statement"));
    CHECK_THROWS_WITH(ChatTemplate("{{ 'x' @ 1 }}", "", ""), Catch::Contains("unexpected character"));
    CHECK_THROWS_WITH(render("{{ raise_exception('only user and assistant') }}", msgs),
                      Catch::Contains("raised: only user and assistant"));
    CHECK_THROWS_WITH(render("{{ x|frobnicate }}", msgs), Catch::Contains("unknown filter"));
    CHECK_THROWS_WITH(render("{{ 1 + 'a' }}", msgs), Catch::Contains("operator '+'"));
    CHECK_THROWS_WITH(render("{{ 1 // 0 }}", msgs), Catch::Contains("division by zero"));
    CHECK_THROWS_WITH(render("{% set n.a = 1 %}", msgs), Catch::Contains("not a namespace"));
    CHECK_THROWS_WITH(render("{{ nope() }}", msgs), Catch::Contains("unknown function"));

    TokenizerData d;
    d.tokens = {"<s>", "</s>"};
    d.bos_id = 0;
    d.eos_id = 1;
    d.chat_template = "{% include 'other.jinja' %}";
    ChatTemplate t(d);
    CHECK(t.is_fallback());
    CHECK_THAT(t.warning(), Catch::Contains("outside ds3's Jinja subset") && Catch::Contains("DeepSeek-V3"));
    CHECK(t.render(std::vector<ChatMessage>{{"user", "x"}}, true) == "<s><｜User｜>x<｜Assistant｜>");
    d.chat_template.clear();
    ChatTemplate none(d);
    CHECK(none.is_fallback());
    CHECK_THAT(none.warning(), Catch::Contains("no chat template"));
}

TEST_CASE("parse_messages checks the shape", "[template][errors]") {
    CHECK(parse_messages(R"([{"role":"user","content":"x","extra":1}])").size() == 1);
    CHECK_THROWS_WITH(parse_messages("{}"), Catch::Contains("expected a JSON array"));
    CHECK_THROWS_WITH(parse_messages(R"([{"content":"x"}])"), Catch::Contains("messages[0]") && Catch::Contains("role"));
    CHECK_THROWS_WITH(parse_messages(R"([{"role":"user","content":"x"},{"role":"user","content":3}])"),
                      Catch::Contains("messages[1]"));
    CHECK_THROWS_WITH(parse_messages("[oops"), Catch::Contains("invalid JSON"));
}
