#include "runtime/error.h"

namespace ds3 {

static std::string format_error(std::string_view component, std::string_view message) {
    std::string s;
    s.reserve(component.size() + message.size() + 3);
    s += '[';
    s += component;
    s += "] ";
    s += message;
    return s;
}

Error::Error(std::string_view component, std::string_view message)
    : std::runtime_error(format_error(component, message)),
      component_(component),
      message_(message) {}

}  // namespace ds3
