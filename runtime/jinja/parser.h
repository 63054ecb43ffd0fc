// Jinja parsing: the template source to the statement tree of ast.h. Throws
// Error("template", ...) naming the offset of the tag that does not parse, including
// statements outside the subset (chat_template.h lists it).
#pragma once

#include <string>

#include "runtime/jinja/ast.h"

namespace ds3::jinja {

Body parse_template(const std::string& src);

}  // namespace ds3::jinja
