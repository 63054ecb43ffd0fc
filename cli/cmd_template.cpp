// `ds3 template -m MODEL --messages FILE.json [--add-generation-prompt] [--vars JSON]`:
// prints the conversation rendered with the model's chat template, exactly the prompt text
// the runtime would tokenize. MODEL is a GGUF file or a Hugging Face directory.
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "cli/inputs.h"
#include "runtime/chat_template.h"
#include "runtime/error.h"

namespace {

using namespace ds3;

struct Args {
    std::string model, messages, vars;
    bool gen = false;
};

cli::Registrar reg{"template", "Render a conversation with the model's chat template", [](CLI::App& sub) {
    auto a = std::make_shared<Args>();
    sub.add_option("-m,--model", a->model, "Model file (GGUF) or Hugging Face directory")->required();
    sub.add_option("--messages", a->messages, "JSON file: a list of {\"role\", \"content\"}")->required();
    sub.add_flag("--add-generation-prompt", a->gen, "End with the assistant prefix, ready for generation");
    sub.add_option("--vars", a->vars, "Extra template variables as a JSON object, e.g. {\"thinking\": true}");
    return [a]() {
        nlohmann::ordered_json msgs = parse_messages(cli::read_whole_file(a->messages, "template"));
        nlohmann::ordered_json extra = nlohmann::ordered_json::object();
        if (!a->vars.empty()) {
            try {
                extra = nlohmann::ordered_json::parse(a->vars);
            } catch (const std::exception& e) {
                throw Error("cli", std::string("--vars: invalid JSON: ") + e.what());
            }
            if (!extra.is_object()) throw Error("cli", "--vars: expected a JSON object");
        }
        ChatTemplate tmpl(cli::load_tokenizer_data(a->model));
        if (!tmpl.warning().empty()) std::fprintf(stderr, "ds3: warning: %s\n", tmpl.warning().c_str());
        std::string out = tmpl.render_json(msgs, a->gen, extra);
        std::fwrite(out.data(), 1, out.size(), stdout);
        return 0;
    };
}};

}  // namespace
