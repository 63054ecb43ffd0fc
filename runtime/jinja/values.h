// Jinja values with Python's semantics: a JSON value plus an "undefined" flag (and a
// macro, when callable); truthiness, str()/repr() as Python prints them, json.dumps as
// transformers' `tojson` calls it, and the string helpers the methods and filters share.
// Namespaces are JSON objects mutated in place.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/jinja/ast.h"

namespace ds3::jinja {

struct Val {
    ojson j;
    bool undefined = false;
    const Node* macro = nullptr;  // a macro, when callable
    static Val undef() {
        Val v;
        v.undefined = true;
        return v;
    }
};
// A defined value.
inline Val V(ojson j) { return Val{std::move(j), false, nullptr}; }

bool truthy(const Val& v);
// Python's repr() of a float: the shortest text that reads back the same.
std::string py_float(double d);
std::string py_str(const ojson& j);   // str()
std::string py_repr(const ojson& j);  // repr()
// Python's json.dumps(x, ensure_ascii=False[, indent=n]): ", " / ": " separators without
// indent, "," / ": " with it; only control characters, quote and backslash are escaped.
void py_json(const ojson& j, int indent, int depth, std::string& out);
// What {{ v }} prints: str(v), nothing for undefined.
std::string to_output(const Val& v);
std::string type_name(const Val& v);
// The value as an integer / a string, or Error naming `what` and the type found.
int64_t as_int(const Val& v, const char* what);
const std::string& as_str(const Val& v, const char* what);
// Python-style index normalisation; nullopt when out of range.
std::optional<size_t> py_index(int64_t i, size_t n);
// str.split(): on whitespace runs when `sep` is absent.
std::vector<std::string> split_str(const std::string& s, const std::optional<std::string>& sep);
// str.strip()/lstrip()/rstrip(): `chars` null strips whitespace.
std::string strip_str(const std::string& s, const std::string* chars, bool left, bool right);
bool values_equal(const Val& a, const Val& b);

}  // namespace ds3::jinja
