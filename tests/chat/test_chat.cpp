// `ds3 chat` over a pipe and under a pseudo-terminal, and `ds3 run -p`, on the converted
// v3-realvocab fixture. Its weights are random, so the text is garbage: the checks are on
// structure, determinism and ids.
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <cstdio>
#include <sstream>

#include "chat_fixture.h"

using namespace ds3::test;
using json = nlohmann::json;

namespace {

size_t count_of(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
    return n;
}

// "[1, 2]" -> "1,2"
std::string ids_csv(const std::string& json_ids) {
    std::string csv;
    for (const auto& id : json::parse(json_ids)) {
        if (!csv.empty()) csv.push_back(',');
        csv.append(std::to_string(id.get<int>()));
    }
    return csv;
}

std::string strip_nl(std::string s) {
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
}

// A ds3 child on a pseudo-terminal: its stdin, stdout and stderr are the terminal, so
// writing "\x03" is a real Ctrl-C (the line discipline sends SIGINT).
struct PtyChild {
    pid_t pid = -1;
    int fd = -1;
    std::string seen;

    explicit PtyChild(const std::vector<std::string>& args) {
        std::vector<std::string> copy = args;
        std::string bin = DS3_BINARY;
        std::vector<char*> argv{bin.data()};
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        pid = forkpty(&fd, nullptr, nullptr, nullptr);
        if (pid == 0) {
            execv(bin.c_str(), argv.data());
            _exit(127);
        }
        REQUIRE(pid > 0);
    }
    ~PtyChild() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        if (fd >= 0) close(fd);
    }
    // Reads until pred(seen) or the timeout; false on timeout or end of output.
    bool wait_for(const std::function<bool(const std::string&)>& pred, double seconds = 30) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (!pred(seen)) {
            if (std::chrono::steady_clock::now() > end) return false;
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 50) <= 0) continue;
            char buf[4096];
            const ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) return pred(seen);
            seen.append(buf, static_cast<size_t>(n));
        }
        return true;
    }
    void send(const std::string& s) { REQUIRE(write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size())); }
    int wait_exit(double seconds = 30) {
        const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (std::chrono::steady_clock::now() < end) {
            wait_for([](const std::string&) { return false; }, 0.05);  // drain the terminal
            int st = 0;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                pid = -1;
                return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
        }
        return -1;
    }
};

}  // namespace

TEST_CASE("ds3 chat over a pipe: turns, commands, saved JSON", "[chat][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    const fs::path dir = scratch_dir("chat-pipe");
    const std::string f1 = (dir / "c1.json").string(), f2 = (dir / "c2.json").string();
    const std::string input = "/system Be brief.\nHello\nHow are you?\n/save " + f1 +
                              "\n/reset\nAgain\n/load " + f1 +
                              "\nMore\n/bogus\n/save\n/load /nonexistent/x.json\n/help\n\n"
                              "Two\\\nlines\n//slash\n/save " + f2 + "\n/exit\nnever answered\n";
    RunResult r = run_ds3({"chat", "-m", m, "-n", "7", "--temp", "0"}, input);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);

    const json c1 = json::parse(read_file(f1));
    REQUIRE(c1.size() == 5);
    const std::vector<std::string> roles = {"system", "user", "assistant", "user", "assistant"};
    for (size_t i = 0; i < 5; ++i) CHECK(c1[i]["role"] == roles[i]);
    CHECK(c1[0]["content"] == "Be brief.");
    CHECK(c1[1]["content"] == "Hello");
    CHECK(c1[3]["content"] == "How are you?");

    // Loaded c1 + More, Two\nlines, /slash: 5 + 6 messages.
    const json c2 = json::parse(read_file(f2));
    REQUIRE(c2.size() == 11);
    for (size_t i = 0; i < 5; ++i) CHECK(c2[i] == c1[i]);
    CHECK(c2[5]["content"] == "More");
    CHECK(c2[7]["content"] == "Two\nlines");
    CHECK(c2[9]["content"] == "/slash");

    // stdout holds exactly the answers, one per message, each ending with a newline: no
    // prompt or banner when stdin is not a terminal.
    const std::string a1 = c1[2]["content"], a2 = c1[4]["content"];
    const std::string a4 = c2[6]["content"], a5 = c2[8]["content"], a6 = c2[10]["content"];
    const std::string head = a1 + "\n" + a2 + "\n";
    const std::string tail = a4 + "\n" + a5 + "\n" + a6 + "\n";
    REQUIRE(r.out.size() >= head.size() + tail.size());
    CHECK(r.out.substr(0, head.size()) == head);
    CHECK(r.out.substr(r.out.size() - tail.size()) == tail);
    CHECK(r.out.find("> ") == std::string::npos);
    CHECK(r.err.find("ds3 chat:") == std::string::npos);

    // Command feedback and one speed line per answer (six) on stderr.
    CHECK(r.err.find("system message set") != std::string::npos);
    CHECK(r.err.find("saved 5 messages to " + f1) != std::string::npos);
    CHECK(r.err.find("conversation cleared") != std::string::npos);
    CHECK(r.err.find("loaded 5 messages from " + f1) != std::string::npos);
    CHECK(r.err.find("unknown command /bogus") != std::string::npos);
    CHECK(r.err.find("usage: /save FILE") != std::string::npos);
    CHECK(r.err.find("/load: cannot open /nonexistent/x.json") != std::string::npos);
    CHECK(r.err.find("/reset") != std::string::npos);  // the /help list
    CHECK(r.err.find("saved 11 messages to " + f2) != std::string::npos);
    // Speed lines: "[prompt P tokens (C cached), x tok/s | answer A tokens, y tok/s | reason]".
    struct Speed { long prompt, cached, answer; };
    std::vector<Speed> lines;
    std::istringstream err_lines(r.err);
    for (std::string line; std::getline(err_lines, line);) {
        Speed sp{};
        float tps1 = 0, tps2 = 0;
        if (std::sscanf(line.c_str(), "[prompt %ld tokens (%ld cached), %f tok/s | answer %ld tokens, %f tok/s |",
                        &sp.prompt, &sp.cached, &tps1, &sp.answer, &tps2) == 5)
            lines.push_back(sp);
    }
    REQUIRE(lines.size() == 6);
    // The second turn was fed incrementally: its prompt reuses the first turn's cache.
    CHECK(lines[0].cached == 0);
    CHECK(lines[1].cached > lines[0].prompt);

    // The same second turn in a fresh process, from the saved history, evaluated from
    // scratch, gives the same answer as the incremental one.
    write_file(dir / "first.json", json::array({c1[0], c1[1], c1[2]}).dump());
    RunResult again = run_ds3({"chat", "-m", m, "-n", "7", "--temp", "0"},
                              "/load " + (dir / "first.json").string() + "\nHow are you?\n");
    CHECK(again.exit_code == 0);
    CHECK(again.out == a2 + "\n");
    CHECK(again.err.find("(0 cached)") != std::string::npos);
}

TEST_CASE("ds3 chat over a pipe: end of input, bad files, sampling errors", "[chat][cli][errors]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    const fs::path dir = scratch_dir("chat-err");
    write_file(dir / "bad.json", "{\"role\": \"user\"}");
    // No trailing newline, no /exit: the last line is still a message, EOF exits with 0.
    RunResult r = run_ds3({"chat", "-m", m, "-n", "3", "--temp", "0"},
                          "/load " + (dir / "bad.json").string() + "\n/save /nonexistent/dir/x.json\nlast line");
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.err.find("[template] messages: expected a JSON array") != std::string::npos);
    CHECK(r.err.find("/save: cannot write /nonexistent/dir/x.json.tmp") != std::string::npos);
    CHECK(count_of(r.out, "\n") >= 1);
    CHECK(r.err.find("answer 3 tokens") != std::string::npos);

    r = run_ds3({"chat", "-m", m, "--top-p", "1.5"}, "hi\n");
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("[sampling] top_p must be in (0, 1]") != std::string::npos);
    r = run_ds3({"chat", "-m", m, "--stop", ""}, "hi\n");
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("--stop: a stop string must not be empty") != std::string::npos);
}

TEST_CASE("ds3 chat: a full context drops the oldest turns, keeps the system message", "[chat][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    const fs::path dir = scratch_dir("chat-ctx");
    const std::string f = (dir / "ctx.json").string();
    std::string input = "/system S.\n";
    for (int i = 1; i <= 6; ++i) input.append("m").append(std::to_string(i)).append("\n");
    input += "/save " + f + "\n";
    // A message too long for the context even alone is refused; the chat goes on.
    std::string huge;
    for (int i = 0; i < 60; ++i) huge += " w" + std::to_string(i);
    input += huge + "\nm7\n";
    RunResult r = run_ds3({"chat", "-m", m, "-c", "47", "-n", "6", "--temp", "0", "--ignore-eos"}, input);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.find("context full: dropped the oldest turn(s)") != std::string::npos);
    CHECK(r.err.find("[chat] the message does not fit in the context") != std::string::npos);
    CHECK(count_of(r.err, "tok/s | answer 6 tokens") == 7);
    const json c = json::parse(read_file(f));
    REQUIRE(c.size() >= 3);
    CHECK(c[0]["role"] == "system");
    CHECK(c[1]["role"] == "user");
    CHECK(c[1]["content"] != "m1");
    CHECK(c[c.size() - 2]["content"] == "m6");
    CHECK(c.size() < 13);

    // Without -n an answer runs until the context is full, and says so.
    r = run_ds3({"chat", "-m", m, "-c", "33", "--temp", "0", "--ignore-eos"}, "hi\nagain\n");
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.err.find("context full: the answer was cut at") != std::string::npos);
    CHECK(r.err.find("context full: dropped the oldest turn(s)") != std::string::npos);
}

TEST_CASE("ds3 chat under a pseudo-terminal: Ctrl-C stops the answer, not the program", "[chat][cli][pty]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    const fs::path dir = scratch_dir("chat-pty");
    const std::string f = (dir / "p.json").string();
    // Unbounded answer (no -n, EOS ignored) in a context big enough to outlast the test.
    PtyChild c({"chat", "-m", m, "-c", "4096", "--temp", "0", "--ignore-eos"});
    auto ends_with_prompt = [](const std::string& s) { return s.size() >= 2 && s.compare(s.size() - 2, 2, "> ") == 0; };
    REQUIRE(c.wait_for(ends_with_prompt));
    CHECK(c.seen.find("ds3 chat: ") != std::string::npos);  // the banner, on a terminal
    c.send("Hello\r");
    const size_t start = c.seen.size();
    REQUIRE(c.wait_for([&](const std::string& s) { return s.size() > start + 40; }));
    c.send("\x03");
    REQUIRE(c.wait_for([&](const std::string& s) { return s.find("[interrupted]") != std::string::npos && ends_with_prompt(s); }));
    CHECK(c.seen.find("| interrupted]") != std::string::npos);
    // Still running: the partial answer is in the history.
    c.send("/save " + f + "\r");
    REQUIRE(c.wait_for([&](const std::string& s) { return s.find("saved 2 messages") != std::string::npos && ends_with_prompt(s); }));
    const json j = json::parse(read_file(f));
    REQUIRE(j.size() == 2);
    CHECK(j[1]["role"] == "assistant");
    CHECK(!j[1]["content"].get<std::string>().empty());
    // A second message is answered after the interrupt.
    c.send("Short\r");
    const size_t before = c.seen.size();
    REQUIRE(c.wait_for([&](const std::string& s) { return s.size() > before + 20; }));
    c.send("\x03");
    REQUIRE(c.wait_for([&](const std::string& s) { return count_of(s, "[interrupted]") == 2 && ends_with_prompt(s); }));
    // Ctrl-C at the prompt: the first one explains, the second exits with 130.
    c.send("\x03");
    REQUIRE(c.wait_for([](const std::string& s) { return s.find("Ctrl-C again to exit") != std::string::npos; }));
    c.send("\x03");
    CHECK(c.wait_exit() == 130);
}

TEST_CASE("ds3 chat under a pseudo-terminal: /exit and end of input exit with 0", "[chat][cli][pty]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    {
        PtyChild c({"chat", "-m", m, "-n", "3", "--temp", "0"});
        auto prompts = [](const std::string& s) { return count_of(s, "> "); };
        REQUIRE(c.wait_for([&](const std::string& s) { return prompts(s) >= 1; }));
        c.send("Hi\r");
        REQUIRE(c.wait_for([&](const std::string& s) { return s.find("answer 3 tokens") != std::string::npos && prompts(s) >= 2; }));
        c.send("/exit\r");
        CHECK(c.wait_exit() == 0);
    }
    {
        PtyChild c({"chat", "-m", m});
        REQUIRE(c.wait_for([](const std::string& s) { return s.find("> ") != std::string::npos; }));
        c.send("\x04");  // Ctrl-D at the start of a line: end of input
        CHECK(c.wait_exit() == 0);
    }
}

TEST_CASE("ds3 run -p: same ids as --tokens of the rendered prompt", "[chat][run][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    const fs::path dir = scratch_dir("run-p");
    write_file(dir / "msgs.json", R"([{"role": "system", "content": "Sys."}, {"role": "user", "content": "Hello there"}])");
    RunResult t = run_ds3({"template", "-m", m, "--messages", (dir / "msgs.json").string(), "--add-generation-prompt"});
    REQUIRE(t.exit_code == 0);
    write_file(dir / "rendered.txt", t.out);
    RunResult ids = run_ds3({"tokenize", "-m", m, "--file", (dir / "rendered.txt").string(), "--json"});
    REQUIRE(ids.exit_code == 0);
    std::string csv = ids_csv(ids.out);

    RunResult want = run_ds3({"run", "-m", m, "--tokens", csv, "-n", "11", "--temp", "0", "--print-ids"});
    RunResult got = run_ds3({"run", "-m", m, "-p", "Hello there", "--chat", "--system", "Sys.", "-n", "11", "--temp",
                             "0", "--print-ids", "--ignore-eos"});
    INFO(got.err);
    REQUIRE(want.exit_code == 0);
    REQUIRE(got.exit_code == 0);
    CHECK(got.out == want.out);
    CHECK(count_of(got.out, ",") == 10);
    CHECK(got.err.find("stopped: max tokens") != std::string::npos);

    // Raw prompt (no --chat): BOS (the file's add_bos_token) + the text's tokens.
    ids = run_ds3({"tokenize", "-m", m, "--text", "Once upon a time", "--json", "--add-bos"});
    csv = ids_csv(ids.out);
    want = run_ds3({"run", "-m", m, "--tokens", csv, "-n", "5", "--temp", "0", "--print-ids"});
    got = run_ds3({"run", "-m", m, "-p", "Once upon a time", "-n", "5", "--temp", "0", "--print-ids", "--ignore-eos"});
    CHECK(got.out == want.out);

    // Text output is the decoding of those ids, then a newline; timing on stderr.
    RunResult text = run_ds3({"run", "-m", m, "-p", "Once upon a time", "-n", "5", "--temp", "0", "--ignore-eos"});
    CHECK(text.exit_code == 0);
    CHECK(!strip_nl(text.out).empty());
    CHECK(text.err.find("decode 5 tokens") != std::string::npos);
}

TEST_CASE("ds3 run -p: seeds, stop strings, errors", "[chat][run][cli]") {
    DS3_REQUIRE_FIXTURES(fx);
    const std::string m = realvocab_gguf(fx).string();
    auto sampled = [&](const std::string& seed) {
        return run_ds3({"run", "-m", m, "-p", "Once upon", "-n", "12", "--temp", "0.9", "--top-k", "50", "--seed", seed,
                        "--ignore-eos"});
    };
    RunResult a = sampled("11"), b = sampled("11"), c = sampled("12");
    REQUIRE(a.exit_code == 0);
    CHECK(a.out == b.out);
    CHECK(a.out != c.out);
    CHECK(a.err.find("seed 11") != std::string::npos);

    // A stop string cut from the greedy text itself stops the text right before it.
    RunResult full = run_ds3({"run", "-m", m, "-p", "Once upon", "-n", "20", "--temp", "0", "--ignore-eos"});
    const std::string text = strip_nl(full.out);
    REQUIRE(text.size() > 8);
    size_t cut = text.size() / 2;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    size_t end = cut + 1;
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    const std::string stop = text.substr(cut, end - cut);
    RunResult s = run_ds3({"run", "-m", m, "-p", "Once upon", "-n", "20", "--temp", "0", "--ignore-eos", "--stop",
                           "zzz-never", "--stop", stop});
    INFO(stop);
    CHECK(s.exit_code == 0);
    CHECK(s.out == text.substr(0, text.find(stop)) + "\n");
    CHECK(s.err.find("stopped: stop string") != std::string::npos);

    RunResult e = run_ds3({"run", "-m", m, "-p", "x", "--system", "S"});
    CHECK(e.exit_code == 1);
    CHECK(e.err.find("--system needs --chat") != std::string::npos);
    e = run_ds3({"run", "-m", m, "-p", "x", "--min-p", "2"});
    CHECK(e.exit_code == 1);
    CHECK(e.err.find("[sampling]") != std::string::npos);
    e = run_ds3({"run", "-m", m, "-p", "x", "--tokens", "1,2"});
    CHECK(e.exit_code != 0);
    CHECK(e.err.find("excludes") != std::string::npos);
    e = run_ds3({"run", "-m", m, "-p", "x", "-c", "1"});  // BOS + "x"
    CHECK(e.exit_code == 1);
    CHECK(e.err.find("[generate] prompt of 2 tokens does not fit in the context of 1") != std::string::npos);
}
