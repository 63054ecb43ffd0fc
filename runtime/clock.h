// Wall-clock timing on the steady clock: the benchmark's and generation's seconds.
#pragma once

#include <chrono>

namespace ds3 {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace ds3
