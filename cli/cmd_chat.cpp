// `ds3 chat -m MODEL [--system TEXT] [-c N] [sampling options]`: interactive multi-turn
// chat, and the text path of `ds3 run -p TEXT` (declared in generate_args.h), which
// shares its setup.
//
// The chat reads one user message per line (a line ending in '\' continues on the next),
// streams the answer to stdout, and prints a speed line on stderr after each answer.
// Commands: /reset /system [TEXT] /save FILE /load FILE /help /exit; "//..." sends a
// message starting with '/'. When stdin is not a terminal there is no banner and no "> "
// prompt: stdout holds only the answers, each ending with a newline, so a script can feed
// one message per line.
//
// Ctrl-C during an answer stops that answer (the partial answer stays in the history) and
// returns to the prompt. At the prompt, a first Ctrl-C says how to leave, a second one in
// a row exits (status 130). A third Ctrl-C that the program has not reacted to (stuck in a
// long computation) exits at once. EOF and /exit exit with status 0.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/command.h"
#include "cli/generate_args.h"
#include "cli/inputs.h"
#include "models/runner.h"
#include "runtime/chat_template.h"
#include "runtime/error.h"
#include "runtime/generate.h"
#include "runtime/gguf/gguf.h"
#include "runtime/signals.h"
#include "runtime/tokenizer.h"

namespace ds3::cli {

void SamplingArgs::add_to(CLI::App& app, bool own_temp_n) {
    if (own_temp_n) {
        o_temp = app.add_option("--temp", temp, "Sampling temperature (0: greedy; default: the file's)");
        o_n = app.add_option("-n,--n-predict", n_predict,
                             "Maximum tokens per answer (default -1: until the end of the answer or the context)");
    }
    o_top_k = app.add_option("--top-k", top_k, "Keep the k most likely tokens (0: off)");
    o_top_p = app.add_option("--top-p", top_p, "Nucleus sampling mass (1: off)");
    o_min_p = app.add_option("--min-p", min_p, "Drop tokens below this fraction of the best one (0: off)");
    o_rep = app.add_option("--repeat-penalty", repeat_penalty, "Repetition penalty (1: off)");
    o_last_n = app.add_option("--repeat-last-n", repeat_last_n, "Tokens the penalties look back on (-1: all)");
    o_pres = app.add_option("--presence-penalty", presence_penalty, "Presence penalty (0: off)");
    o_freq = app.add_option("--frequency-penalty", frequency_penalty, "Frequency penalty (0: off)");
    o_seed = app.add_option("--seed", seed, "Random seed (default: a random one, printed on stderr)");
    app.add_option("--stop", stop, "Stop string; repeat the option for several")->allow_extra_args(false);
    app.add_flag("--ignore-eos", ignore_eos, "Keep generating past the end-of-sentence token");
}

SamplingParams SamplingArgs::resolve(const gguf::File& f) const {
    SamplingParams p = sampling_defaults(f);
    auto given = [](const CLI::Option* o) { return o && o->count() > 0; };
    if (given(o_temp)) p.temperature = static_cast<float>(temp);
    if (given(o_top_k)) p.top_k = top_k;
    if (given(o_top_p)) p.top_p = static_cast<float>(top_p);
    if (given(o_min_p)) p.min_p = static_cast<float>(min_p);
    if (given(o_rep)) p.repetition_penalty = static_cast<float>(repeat_penalty);
    if (given(o_pres)) p.presence_penalty = static_cast<float>(presence_penalty);
    if (given(o_freq)) p.frequency_penalty = static_cast<float>(frequency_penalty);
    if (given(o_last_n)) p.penalty_last_n = repeat_last_n;
    p.max_tokens = given(o_n) && n_predict >= 0 ? static_cast<int32_t>(std::min<int64_t>(n_predict, INT32_MAX)) : -1;
    p.seed = given(o_seed) ? seed : std::random_device{}();
    p.stop = stop;
    for (const std::string& s : p.stop)
        if (s.empty()) throw Error("cli", "--stop: a stop string must not be empty");
    validate(p);
    return p;
}

void TextRunArgs::add_to(CLI::App& app) {
    o_prompt = app.add_option("-p,--prompt", prompt, "Prompt text (generates text; see --chat)");
    app.add_flag("--chat", chat, "Wrap the prompt as a user message through the file's chat template");
    app.add_option("--system", system, "System message (with --chat)");
    s.add_to(app, false);
    s.o_temp = app.get_option_no_throw("--temp");
    s.o_n = app.get_option_no_throw("-n");
    if (auto* tokens = app.get_option_no_throw("--tokens")) o_prompt->excludes(tokens);
}

namespace {

// Everything a generating command needs, loaded from one file. Not movable: the Runner
// refers to the model.
struct Loaded {
    gguf::File file;
    Tokenizer tok;
    ChatTemplate tmpl;
    Deepseek2Model model;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<Runner> runner;

    explicit Loaded(const ModelArgs& m)
        : file(gguf::File::open(m.model)), tok(read_tokenizer(file)), tmpl(tok.data()), model(load_deepseek2(m.model)) {
        if (!tmpl.warning().empty()) std::fprintf(stderr, "ds3: warning: %s\n", tmpl.warning().c_str());
        BackendOptions bo;
        bo.n_threads = m.threads;
        backend = create_backend(m.backend, bo);
        runner = std::make_unique<Runner>(model, std::vector<Backend*>{backend.get()}, m.n_ctx);
    }
    Loaded(const Loaded&) = delete;
    Loaded& operator=(const Loaded&) = delete;
};

void write_out(std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

}  // namespace

int run_text(const ModelArgs& m, TextRunArgs t, double temp, int64_t n_predict, bool print_ids) {
    if (!t.chat && !t.system.empty()) throw Error("cli", "run: --system needs --chat");
    t.s.temp = temp;
    t.s.n_predict = n_predict;
    Loaded L(m);
    const SamplingParams sp = t.s.resolve(L.file);
    std::vector<int32_t> ids;
    if (t.chat) {
        std::vector<ChatMessage> msgs;
        if (!t.system.empty()) msgs.push_back({"system", t.system});
        msgs.push_back({"user", t.prompt});
        ids = L.tok.encode(L.tmpl.render(msgs, true));  // the template writes BOS itself
    } else {
        EncodeOptions eo;
        eo.add_bos = L.tok.data().add_bos;
        ids = L.tok.encode(t.prompt, eo);
    }
    Sampler sampler(sp);
    Generator gen(*L.runner, L.tok);
    GenerateOptions opt;
    opt.ignore_eos = t.s.ignore_eos;
    GenerateResult r = gen.generate(ids, sampler, print_ids ? TextSink() : TextSink([](std::string_view piece) {
        write_out(piece);
        return true;
    }), opt);
    if (print_ids) {
        std::string line;
        for (size_t i = 0; i < r.ids.size(); ++i) line += (i ? "," : "") + std::to_string(r.ids[i]);
        write_out(line);
    }
    write_out("\n");
    std::fprintf(stderr,
                 "run: prompt %lld tokens in %.3f s (%.2f tok/s); decode %lld tokens in %.3f s (%.2f tok/s); "
                 "stopped: %s; seed %llu\n",
                 static_cast<long long>(r.stats.n_prompt), r.stats.prompt_s, r.stats.prompt_tps(),
                 static_cast<long long>(r.stats.n_gen), r.stats.gen_s, r.stats.gen_tps(), to_string(r.reason),
                 static_cast<unsigned long long>(sp.seed));
    return 0;
}

namespace {

// Lines from fd 0 through poll(2) + read(2) rather than iostreams, so a Ctrl-C at the
// prompt is noticed whichever thread the signal lands on (the counter is checked between
// short polls) and EINTR never leaves a stream in a failed state.
class LineReader {
public:
    enum class Status { line, eof, interrupted };

    Status read_line(std::string& out) {
        for (;;) {
            const size_t nl = buf_.find('\n');
            if (nl != std::string::npos) {
                out.assign(buf_, 0, nl);
                buf_.erase(0, nl + 1);
                if (!out.empty() && out.back() == '\r') out.pop_back();
                return Status::line;
            }
            if (eof_) {
                if (buf_.empty()) return Status::eof;
                out.swap(buf_);
                buf_.clear();
                return Status::line;
            }
            if (interrupt_count() > 0) return Status::interrupted;
            pollfd p{0, POLLIN, 0};
            const int r = ::poll(&p, 1, 100);
            if (r < 0 && errno != EINTR) throw Error("cli", std::string("chat: poll on stdin: ") + std::strerror(errno));
            if (r <= 0) continue;
            char tmp[4096];
            const ssize_t n = ::read(0, tmp, sizeof tmp);
            if (n > 0) {
                buf_.append(tmp, static_cast<size_t>(n));
            } else if (n == 0 || errno == EIO) {  // EIO: the terminal went away
                eof_ = true;
            } else if (errno != EINTR && errno != EAGAIN) {
                throw Error("cli", std::string("chat: reading stdin: ") + std::strerror(errno));
            }
        }
    }

private:
    std::string buf_;
    bool eof_ = false;
};

const char* kHelp =
    "commands:\n"
    "  /reset         forget the conversation (the system message is kept)\n"
    "  /system [TEXT] set the system message (none: remove it)\n"
    "  /save FILE     save the conversation as JSON ([{\"role\", \"content\"}, ...])\n"
    "  /load FILE     load a conversation saved by /save (or written for `ds3 template`)\n"
    "  /help          this list\n"
    "  /exit          leave (so does end of input)\n"
    "a line ending in '\\' continues on the next; start a message with '//' to send one starting with '/'.\n"
    "Ctrl-C stops the answer; at the prompt, Ctrl-C twice exits.\n";

void save_messages(const std::string& path, const std::vector<ChatMessage>& msgs) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const ChatMessage& m : msgs) j.push_back({{"role", m.role}, {"content", m.content}});
    const std::string text = j.dump(2) + "\n";
    const std::string tmp = path + ".tmp";
    TempFileGuard guard(tmp);
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw Error("cli", "/save: cannot write " + tmp);
        f.write(text.data(), static_cast<std::streamsize>(text.size()));
        if (!f) {
            std::filesystem::remove(tmp);
            throw Error("cli", "/save: write to " + tmp + " failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        throw Error("cli", "/save: cannot rename " + tmp + " to " + path);
    }
}

std::vector<ChatMessage> load_messages(const std::string& path) {
    const nlohmann::ordered_json j = parse_messages(read_whole_file(path, "/load"));
    std::vector<ChatMessage> msgs;
    for (const auto& m : j) msgs.push_back({m["role"].get<std::string>(), m["content"].is_null() ? "" : m["content"].get<std::string>()});
    return msgs;
}

struct ChatArgs {
    ModelArgs m;
    SamplingArgs s;
    std::string system;
};

int run_chat(const ChatArgs& a) {
    Loaded L(a.m);
    const SamplingParams sp = a.s.resolve(L.file);
    Sampler sampler(sp);
    Generator gen(*L.runner, L.tok);
    // Room kept for an answer when deciding whether the history still fits.
    const int64_t reserve = sp.max_tokens > 0 ? sp.max_tokens : gen.n_ctx() / 4;
    ChatSession chat(gen, L.tmpl, reserve);
    chat.set_system(a.system);
    GenerateOptions opt;
    opt.ignore_eos = a.s.ignore_eos;
    opt.interrupted = [] { return interrupt_count() > 0; };

    const bool tty = ::isatty(0) != 0;
    install_soft_interrupt();
    take_interrupts();
    if (tty)
        std::fprintf(stderr, "ds3 chat: %s, context %lld tokens, seed %llu. /help lists the commands; Ctrl-C stops an answer.\n",
                     a.m.model.c_str(), static_cast<long long>(gen.n_ctx()), static_cast<unsigned long long>(sp.seed));

    LineReader in;
    int ctrl_c_at_prompt = 0;
    for (;;) {
        if (tty) write_out("> ");
        std::string line;
        LineReader::Status st = in.read_line(line);
        if (st == LineReader::Status::eof) {
            if (tty) write_out("\n");
            return 0;
        }
        if (st == LineReader::Status::interrupted) {
            take_interrupts();
            if (++ctrl_c_at_prompt >= 2) {
                std::fputs("\n", stderr);
                return 130;
            }
            std::fputs("\n(Ctrl-C again to exit, or /exit)\n", stderr);
            continue;
        }
        ctrl_c_at_prompt = 0;
        while (!line.empty() && line.back() == '\\') {
            line.back() = '\n';
            if (tty) write_out(". ");
            std::string more;
            st = in.read_line(more);
            if (st != LineReader::Status::line) break;
            line += more;
        }
        take_interrupts();
        if (line.empty()) continue;

        if (line[0] == '/' && line.compare(0, 2, "//") != 0) {
            const size_t sp_at = line.find_first_of(" \t");
            const std::string cmd = line.substr(0, sp_at);
            std::string arg;
            if (sp_at != std::string::npos) {
                const size_t b = line.find_first_not_of(" \t", sp_at);
                if (b != std::string::npos) arg = line.substr(b);
            }
            try {
                if (cmd == "/exit" || cmd == "/quit") return 0;
                if (cmd == "/help") {
                    std::fputs(kHelp, stderr);
                } else if (cmd == "/reset") {
                    chat.reset();
                    std::fputs("conversation cleared (the system message is kept)\n", stderr);
                } else if (cmd == "/system") {
                    chat.set_system(arg);
                    std::fputs(arg.empty() ? "system message removed\n" : "system message set\n", stderr);
                } else if (cmd == "/save" || cmd == "/load") {
                    if (arg.empty()) throw Error("cli", "usage: " + cmd + " FILE");
                    if (cmd == "/save") {
                        const auto msgs = chat.messages();
                        save_messages(arg, msgs);
                        std::fprintf(stderr, "saved %zu messages to %s\n", msgs.size(), arg.c_str());
                    } else {
                        chat.set_messages(load_messages(arg));
                        std::fprintf(stderr, "loaded %zu messages from %s\n", chat.messages().size(), arg.c_str());
                    }
                } else {
                    std::fprintf(stderr, "unknown command %s (/help lists them)\n", cmd.c_str());
                }
            } catch (const Error& e) {
                std::fprintf(stderr, "ds3: %s\n", e.what());
            }
            continue;
        }
        if (line.compare(0, 2, "//") == 0) line.erase(0, 1);

        ChatTurn turn;
        try {
            turn = chat.send(line, sampler, [](std::string_view piece) {
                write_out(piece);
                return true;
            }, opt);
        } catch (const Error& e) {
            std::fprintf(stderr, "ds3: %s\n", e.what());
            take_interrupts();
            continue;
        }
        write_out("\n");
        take_interrupts();
        const GenerateStats& s = turn.gen.stats;
        if (turn.n_dropped > 0)
            std::fprintf(stderr, "context full: dropped the oldest turn(s) (%d messages)\n", turn.n_dropped);
        if (turn.gen.reason == StopReason::interrupted) std::fputs("[interrupted]\n", stderr);
        if (turn.gen.reason == StopReason::context_full)
            std::fprintf(stderr, "context full: the answer was cut at %lld tokens; the oldest turn(s) will be dropped\n",
                         static_cast<long long>(s.n_gen));
        std::fprintf(stderr, "[prompt %lld tokens (%lld cached), %.1f tok/s | answer %lld tokens, %.1f tok/s | %s]\n",
                     static_cast<long long>(s.n_prompt), static_cast<long long>(s.n_reused), s.prompt_tps(),
                     static_cast<long long>(s.n_gen), s.gen_tps(), to_string(turn.gen.reason));
    }
}

Registrar reg{"chat", "Interactive multi-turn chat", [](CLI::App& app) {
    auto a = std::make_shared<ChatArgs>();
    a->m.add_to(app);
    app.add_option("--system", a->system, "System message");
    a->s.add_to(app, true);
    return [a]() { return run_chat(*a); };
}};

}  // namespace
}  // namespace ds3::cli
