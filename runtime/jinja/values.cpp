#include "runtime/jinja/values.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ds3::jinja {

bool truthy(const Val& v) {
    if (v.undefined || v.j.is_null()) return false;
    if (v.macro) return true;
    const ojson& j = v.j;
    if (j.is_boolean()) return j.get<bool>();
    if (j.is_number_integer()) return j.get<int64_t>() != 0;
    if (j.is_number()) return j.get<double>() != 0.0;
    if (j.is_string()) return !j.get_ref<const std::string&>().empty();
    if (j.is_array() || j.is_object()) return !j.empty();
    return false;
}

std::string py_float(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    char buf[64];
    for (int prec = 1; prec <= 17; ++prec) {  // shortest text that reads back the same
        std::snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) break;
    }
    std::string s = buf;
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
}

std::string py_str(const ojson& j) {
    if (j.is_string()) return j.get<std::string>();
    return py_repr(j);
}
std::string py_repr(const ojson& j) {
    switch (j.type()) {
        case ojson::value_t::null: return "None";
        case ojson::value_t::boolean: return j.get<bool>() ? "True" : "False";
        case ojson::value_t::number_integer: return std::to_string(j.get<int64_t>());
        case ojson::value_t::number_unsigned: return std::to_string(j.get<uint64_t>());
        case ojson::value_t::number_float: return py_float(j.get<double>());
        case ojson::value_t::string: {
            const std::string& s = j.get_ref<const std::string&>();
            char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
            std::string out(1, q);
            for (char c : s) {
                if (c == q || c == '\\') out += '\\', out += c;
                else if (c == '\n') out += "\\n";
                else if (c == '\t') out += "\\t";
                else if (c == '\r') out += "\\r";
                else out += c;
            }
            return out + q;
        }
        case ojson::value_t::array: {
            std::string out = "[";
            for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + py_repr(j[i]);
            return out + "]";
        }
        case ojson::value_t::object: {
            std::string out = "{";
            bool first = true;
            for (auto it = j.begin(); it != j.end(); ++it) {
                out += (first ? "" : ", ") + py_repr(ojson(it.key())) + ": " + py_repr(it.value());
                first = false;
            }
            return out + "}";
        }
        default: return "";
    }
}

void py_json(const ojson& j, int indent, int depth, std::string& out) {
    auto nl = [&](int d) {
        out += '\n';
        out.append(static_cast<size_t>(indent * d), ' ');
    };
    switch (j.type()) {
        case ojson::value_t::null: out += "null"; return;
        case ojson::value_t::boolean: out += j.get<bool>() ? "true" : "false"; return;
        case ojson::value_t::number_integer: out += std::to_string(j.get<int64_t>()); return;
        case ojson::value_t::number_unsigned: out += std::to_string(j.get<uint64_t>()); return;
        case ojson::value_t::number_float: {
            double d = j.get<double>();
            out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : py_float(d);
            return;
        }
        case ojson::value_t::string: {
            out += '"';
            for (unsigned char c : j.get_ref<const std::string&>()) {
                switch (c) {
                    case '"': out += "\\\""; break;
                    case '\\': out += "\\\\"; break;
                    case '\n': out += "\\n"; break;
                    case '\r': out += "\\r"; break;
                    case '\t': out += "\\t"; break;
                    case '\b': out += "\\b"; break;
                    case '\f': out += "\\f"; break;
                    default:
                        if (c < 0x20) {
                            char buf[8];
                            std::snprintf(buf, sizeof buf, "\\u%04x", c);
                            out += buf;
                        } else {
                            out += static_cast<char>(c);
                        }
                }
            }
            out += '"';
            return;
        }
        case ojson::value_t::array:
        case ojson::value_t::object: {
            bool obj = j.is_object();
            out += obj ? '{' : '[';
            if (j.empty()) {
                out += obj ? '}' : ']';
                return;
            }
            bool first = true;
            for (auto it = j.begin(); it != j.end(); ++it) {
                if (!first) out += indent >= 0 ? "," : ", ";
                first = false;
                if (indent >= 0) nl(depth + 1);
                if (obj) {
                    py_json(ojson(it.key()), indent, depth + 1, out);
                    out += ": ";
                }
                py_json(it.value(), indent, depth + 1, out);
            }
            if (indent >= 0) nl(depth);
            out += obj ? '}' : ']';
            return;
        }
        default: out += "null"; return;
    }
}

std::string to_output(const Val& v) {
    if (v.undefined) return "";
    return py_str(v.j);
}

std::string type_name(const Val& v) {
    if (v.undefined) return "undefined";
    if (v.macro) return "macro";
    return v.j.type_name();
}

int64_t as_int(const Val& v, const char* what) {
    if (v.j.is_number_integer() || v.j.is_number_unsigned()) return v.j.get<int64_t>();
    if (v.j.is_boolean()) return v.j.get<bool>() ? 1 : 0;
    fail(std::string(what) + ": expected an integer, found " + type_name(v));
}

const std::string& as_str(const Val& v, const char* what) {
    if (!v.j.is_string()) fail(std::string(what) + ": expected a string, found " + type_name(v));
    return v.j.get_ref<const std::string&>();
}

std::optional<size_t> py_index(int64_t i, size_t n) {
    if (i < 0) i += static_cast<int64_t>(n);
    if (i < 0 || static_cast<size_t>(i) >= n) return std::nullopt;
    return static_cast<size_t>(i);
}

std::vector<std::string> split_str(const std::string& s, const std::optional<std::string>& sep) {
    std::vector<std::string> out;
    if (!sep) {  // whitespace split, runs collapse
        size_t i = 0;
        while (i < s.size()) {
            while (i < s.size() && is_space(s[i])) ++i;
            if (i >= s.size()) break;
            size_t j = i;
            while (j < s.size() && !is_space(s[j])) ++j;
            out.push_back(s.substr(i, j - i));
            i = j;
        }
        return out;
    }
    if (sep->empty()) fail("split(): empty separator");
    size_t i = 0;
    for (;;) {
        size_t k = s.find(*sep, i);
        if (k == std::string::npos) {
            out.push_back(s.substr(i));
            return out;
        }
        out.push_back(s.substr(i, k - i));
        i = k + sep->size();
    }
}

std::string strip_str(const std::string& s, const std::string* chars, bool left, bool right) {
    auto in = [&](char c) { return chars ? chars->find(c) != std::string::npos : is_space(c); };
    size_t b = 0, e = s.size();
    if (left)
        while (b < e && in(s[b])) ++b;
    if (right)
        while (e > b && in(s[e - 1])) --e;
    return s.substr(b, e - b);
}

bool values_equal(const Val& a, const Val& b) {
    if (a.undefined || b.undefined) return a.undefined && b.undefined;
    return a.j == b.j;
}

}  // namespace ds3::jinja
