#include "runtime/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace ds3 {

std::string format_bytes(double bytes) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        ++u;
    }
    char buf[32];
    if (u == 0) std::snprintf(buf, sizeof buf, "%.0f B", bytes);
    else std::snprintf(buf, sizeof buf, "%.2f %s", bytes, units[u]);
    return buf;
}

namespace {
std::string format_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    const uint64_t t = static_cast<uint64_t>(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%llu:%02llu:%02llu", (unsigned long long)(t / 3600),
                                 (unsigned long long)(t / 60 % 60), (unsigned long long)(t % 60));
    else std::snprintf(buf, sizeof buf, "%llu:%02llu", (unsigned long long)(t / 60), (unsigned long long)(t % 60));
    return buf;
}
}  // namespace

Progress::Progress(std::string label, uint64_t total_bytes, Mode mode)
    : label_(std::move(label)), total_(total_bytes),
      enabled_(mode == Mode::On || (mode == Mode::Auto && isatty(STDERR_FILENO))),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
    if (enabled_ && !finished_) std::fputs("\r\033[K", stderr);  // leave no half line behind on errors
}

double Progress::elapsed_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::set_detail(std::string_view detail) {
    if (!enabled_) return;
    detail_ = detail;
    draw(false);
}

void Progress::add(uint64_t bytes) {
    done_ += bytes;
    if (enabled_) draw(false);
}

void Progress::finish() {
    if (finished_) return;
    finished_ = true;
    if (!enabled_) return;
    const double s = elapsed_s();
    std::fprintf(stderr, "\r\033[K%s: %s in %.1f s (%s/s)\n", label_.c_str(), format_bytes(double(done_)).c_str(), s,
                 format_bytes(s > 0 ? double(done_) / s : 0.0).c_str());
}

std::string Progress::render(std::string_view label, uint64_t done, uint64_t total, double elapsed_s,
                             std::string_view detail, int width) {
    const double frac = total ? std::min(1.0, double(done) / double(total)) : 1.0;
    const double rate = elapsed_s > 0 ? double(done) / elapsed_s : 0.0;
    const double eta = rate > 0 ? double(total > done ? total - done : 0) / rate : NAN;
    constexpr int bar_w = 20;
    const int filled = static_cast<int>(frac * bar_w);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(bar_w, ' ');
    char head[160];
    std::snprintf(head, sizeof head, "%.*s %3d%% [%s] %s/%s  %s/s  ETA %s", int(label.size()), label.data(),
                  int(frac * 100), bar.c_str(), format_bytes(double(done)).c_str(), format_bytes(double(total)).c_str(),
                  format_bytes(rate).c_str(), format_duration(eta).c_str());
    std::string line = head;
    if (!detail.empty() && int(line.size()) + 2 < width) {
        line += "  ";
        line += detail.substr(0, static_cast<size_t>(width - int(line.size())));
    }
    if (int(line.size()) > width) line.resize(static_cast<size_t>(width));
    return line;
}

void Progress::draw(bool force) {
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_draw_ < std::chrono::milliseconds(125)) return;
    last_draw_ = now;
    const std::string line = render(label_, done_, total_, elapsed_s(), detail_, 100);
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
    std::fflush(stderr);
}

}  // namespace ds3
