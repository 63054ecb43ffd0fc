// Errors. Bad input anywhere in the library throws ds3::Error with the component that
// noticed and what it expected versus what it found; its what() reads
//   "[gguf] tensor blk.3.attn_q_a.weight: data ends at 81923 but file has 80000 bytes".
// Broken invariants (bugs, not bad input) use assert. The C API and the CLI catch
// Error at their boundary: the CLI prints the one line and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace ds3 {

class Error : public std::runtime_error {
public:
    Error(std::string_view component, std::string_view message);
    const std::string& component() const { return component_; }
    const std::string& message() const { return message_; }

private:
    std::string component_;
    std::string message_;
};

// Throws Error(component, message) when cond is false.
inline void check(bool cond, std::string_view component, std::string_view message) {
    if (!cond) throw Error(component, message);
}

}  // namespace ds3
