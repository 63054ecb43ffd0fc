#include "runtime/signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace ds3 {

namespace {

constexpr int kSlots = 64;
constexpr size_t kMaxPath = 4096;

// state: 0 free, 1 being written or cleared (the handler skips it), 2 live.
struct Slot {
    std::atomic<int> state{0};
    char path[kMaxPath];
};
Slot g_slots[kSlots];
std::atomic<bool> g_installed{false};

extern "C" void on_interrupt(int sig) {
    for (Slot& s : g_slots)
        if (s.state.load(std::memory_order_acquire) == 2) ::unlink(s.path);
    _exit(128 + sig);
}

// SIGINTs not yet taken by the command (soft mode). Lock-free, so safe in a handler.
std::atomic<int> g_soft_count{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_soft_interrupt(int sig) {
    if (g_soft_count.fetch_add(1, std::memory_order_relaxed) + 1 >= 3) on_interrupt(sig);
}

}  // namespace

void install_soft_interrupt() {
    install_interrupt_handler();  // SIGTERM (and SIGINT until replaced just below)
    struct sigaction sa {};
    sa.sa_handler = on_soft_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a read() waiting for input wakes up with EINTR
    sigaction(SIGINT, &sa, nullptr);
}

int interrupt_count() { return g_soft_count.load(std::memory_order_relaxed); }

int take_interrupts() { return g_soft_count.exchange(0, std::memory_order_relaxed); }

void install_interrupt_handler() {
    if (g_installed.exchange(true)) return;
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

int register_temp_file(const std::string& path) {
    if (path.size() >= kMaxPath) return -1;
    for (int i = 0; i < kSlots; ++i) {
        int expected = 0;
        if (g_slots[i].state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
            std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
            g_slots[i].state.store(2, std::memory_order_release);
            return i;
        }
    }
    return -1;
}

void unregister_temp_file(int slot) {
    if (slot < 0 || slot >= kSlots) return;
    g_slots[slot].state.store(0, std::memory_order_release);
}

}  // namespace ds3
