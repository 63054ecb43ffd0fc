// A one-line progress bar on stderr for long file jobs (convert, quantize):
//   convert  43% [#########            ] 1.21/2.80 GiB  312.4 MiB/s  ETA 0:05  blk.3.ffn_up_exps.weight
// It draws only when stderr is a terminal (or when forced), at most ~8 times a second,
// and erases itself at finish(); otherwise every call is a cheap no-op, so pipes and logs
// stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace ds3 {

class Progress {
public:
    enum class Mode { Auto, On, Off };  // Auto: on when stderr is a terminal
    Progress(std::string label, uint64_t total_bytes, Mode mode = Mode::Auto);
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;
    ~Progress();

    bool enabled() const { return enabled_; }
    void set_detail(std::string_view detail);  // e.g. the tensor being written
    void add(uint64_t bytes);                  // bytes done since the last call
    // Clears the line and, when enabled, prints a summary: "convert: 2.80 GiB in 9.1 s (315 MiB/s)".
    void finish();

    uint64_t done() const { return done_; }
    double elapsed_s() const;

    // The text of the bar for the given state (no terminal control characters); exposed
    // so tests can check the formatting without a terminal.
    static std::string render(std::string_view label, uint64_t done, uint64_t total, double elapsed_s,
                              std::string_view detail, int width = 80);

private:
    void draw(bool force);

    std::string label_;
    uint64_t total_;
    uint64_t done_ = 0;
    bool enabled_;
    bool finished_ = false;
    std::string detail_;
    std::chrono::steady_clock::time_point start_;
    std::chrono::steady_clock::time_point last_draw_;
};

// "1.50 GiB", "312.0 MiB", "17 B".
std::string format_bytes(double bytes);

}  // namespace ds3
