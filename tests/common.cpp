#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace ds3::test {

std::optional<fs::path> fixtures_dir() {
    if (const char* env = std::getenv("DS3_FIXTURES")) {
        if (fs::is_directory(env)) return fs::path(env);
    }
    fs::path p = DS3_FIXTURES_DIR;
    if (fs::is_directory(p / "v3-tiny")) return fs::canonical(p);
    return std::nullopt;
}

namespace {
struct ScratchRoot {
    fs::path root;
    ScratchRoot() {
        std::random_device rd;
        root = fs::temp_directory_path() / ("ds3-test-" + std::to_string(getpid()) + "-" +
                                            std::to_string(rd() % 1000000));
        fs::create_directories(root);
    }
    ~ScratchRoot() {
        std::error_code ec;
        if (!std::getenv("DS3_KEEP_SCRATCH")) fs::remove_all(root, ec);
    }
};
}  // namespace

fs::path scratch_dir(const std::string& tag) {
    static ScratchRoot root;
    static int counter = 0;
    fs::path p = root.root / (tag + "-" + std::to_string(counter++));
    fs::create_directories(p);
    return p;
}

RunResult run_ds3(const std::vector<std::string>& args, const std::string& stdin_text) {
    int in[2], out[2], err[2];
    signal(SIGPIPE, SIG_IGN);
    if (pipe(in) || pipe(out) || pipe(err)) throw std::runtime_error("pipe failed");
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
        std::vector<char*> argv;
        std::string bin = DS3_BINARY;
        argv.push_back(bin.data());
        std::vector<std::string> copy = args;
        for (auto& a : copy) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(bin.c_str(), argv.data());
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    RunResult r;
    size_t in_off = 0;
    if (stdin_text.empty()) { close(in[1]); in[1] = -1; }
    else fcntl(in[1], F_SETFL, O_NONBLOCK);
    bool out_open = true, err_open = true;
    char buf[65536];
    while (out_open || err_open) {
        pollfd fds[3];
        int n = 0;
        if (out_open) fds[n++] = {out[0], POLLIN, 0};
        if (err_open) fds[n++] = {err[0], POLLIN, 0};
        if (in[1] >= 0) fds[n++] = {in[1], POLLOUT, 0};
        if (poll(fds, n, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < n; ++i) {
            if (!fds[i].revents) continue;
            if (fds[i].fd == in[1]) {
                ssize_t w = write(in[1], stdin_text.data() + in_off, stdin_text.size() - in_off);
                if (w > 0) in_off += static_cast<size_t>(w);
                if (w < 0 || in_off == stdin_text.size()) { close(in[1]); in[1] = -1; }
                continue;
            }
            ssize_t k = read(fds[i].fd, buf, sizeof buf);
            if (k <= 0) {
                if (fds[i].fd == out[0]) out_open = false; else err_open = false;
                continue;
            }
            (fds[i].fd == out[0] ? r.out : r.err).append(buf, static_cast<size_t>(k));
        }
    }
    if (in[1] >= 0) close(in[1]);
    close(out[0]);
    close(err[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

std::string read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + p.string());
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + p.string());
}

}  // namespace ds3::test
