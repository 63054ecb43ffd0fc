#include "runtime/jinja/interp.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <utility>
#include <vector>

namespace ds3::jinja {

namespace {

struct BreakSignal {};
struct ContinueSignal {};

class Interp {
public:
    explicit Interp(std::string& out) : out_(&out) { scopes_.emplace_back(); }

    void set_global(const std::string& k, Val v) { scopes_.front()[k] = std::move(v); }

    void exec(const Body& body) {
        for (const auto& n : body) exec(*n);
    }

private:
    std::vector<Scope> scopes_;
    std::string* out_;

    Val* lookup(const std::string& name) {
        for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
            auto f = it->find(name);
            if (f != it->end()) return &f->second;
        }
        return nullptr;
    }

    void exec(const Node& n) {
        switch (n.kind) {
            case NK::Text: *out_ += n.text; break;
            case NK::Output: *out_ += to_output(eval(*n.expr)); break;
            case NK::If:
                for (const auto& [cond, body] : n.branches)
                    if (truthy(eval(*cond))) {
                        exec(body);
                        return;
                    }
                exec(n.else_body);
                break;
            case NK::For: exec_for(n); break;
            case NK::Set: {
                Val v = eval(*n.expr);
                if (n.attr.empty()) {
                    scopes_.back()[n.text] = std::move(v);
                } else {
                    Val* ns = lookup(n.text);
                    if (!ns || !ns->j.is_object())
                        fail("set " + n.text + "." + n.attr + ": " + n.text + " is not a namespace");
                    ns->j[n.attr] = v.j;
                }
                break;
            }
            case NK::SetBlock: {
                std::string buf;
                std::string* saved = out_;
                out_ = &buf;
                exec(n.body);
                out_ = saved;
                scopes_.back()[n.text] = V(buf);
                break;
            }
            case NK::Macro: {
                Val m;
                m.macro = &n;
                scopes_.back()[n.text] = m;
                break;
            }
            case NK::Break: throw BreakSignal{};
            case NK::Continue: throw ContinueSignal{};
        }
    }

    void exec_for(const Node& n) {
        Val seq = eval(*n.expr);
        std::vector<ojson> items;
        if (seq.undefined || seq.j.is_null()) {
        } else if (seq.j.is_array()) {
            items.assign(seq.j.begin(), seq.j.end());
        } else if (seq.j.is_object()) {
            for (auto it = seq.j.begin(); it != seq.j.end(); ++it) items.push_back(it.key());
        } else if (seq.j.is_string()) {
            // iterate characters (UTF-8 code points)
            const std::string& s = seq.j.get_ref<const std::string&>();
            for (size_t i = 0; i < s.size();) {
                size_t len = 1;
                unsigned char c = static_cast<unsigned char>(s[i]);
                if (c >= 0xF0) len = 4;
                else if (c >= 0xE0) len = 3;
                else if (c >= 0xC0) len = 2;
                items.push_back(s.substr(i, len));
                i += len;
            }
        } else {
            fail("for: cannot iterate over " + type_name(seq));
        }
        auto bind = [&](Scope& sc, const ojson& item) {
            if (n.vars.size() == 1) {
                sc[n.vars[0]] = V(item);
            } else {
                if (!item.is_array() || item.size() != n.vars.size())
                    fail("for: cannot unpack " + py_repr(item) + " into " + std::to_string(n.vars.size()) + " names");
                for (size_t k = 0; k < n.vars.size(); ++k) sc[n.vars[k]] = V(item[k]);
            }
        };
        if (n.cond) {  // the loop's `if` filters before loop.* is computed
            std::vector<ojson> kept;
            for (const ojson& item : items) {
                scopes_.emplace_back();
                bind(scopes_.back(), item);
                bool keep = truthy(eval(*n.cond));
                scopes_.pop_back();
                if (keep) kept.push_back(item);
            }
            items.swap(kept);
        }
        if (items.empty()) {
            exec(n.else_body);
            return;
        }
        for (size_t i = 0; i < items.size(); ++i) {
            scopes_.emplace_back();
            Scope& sc = scopes_.back();
            bind(sc, items[i]);
            ojson loop = ojson::object();
            loop["index"] = i + 1;
            loop["index0"] = i;
            loop["revindex"] = items.size() - i;
            loop["revindex0"] = items.size() - i - 1;
            loop["first"] = i == 0;
            loop["last"] = i + 1 == items.size();
            loop["length"] = items.size();
            loop["previtem"] = i > 0 ? items[i - 1] : ojson();
            loop["nextitem"] = i + 1 < items.size() ? items[i + 1] : ojson();
            sc["loop"] = V(loop);
            bool stop = false;
            try {
                exec(n.body);
            } catch (const BreakSignal&) {
                stop = true;
            } catch (const ContinueSignal&) {
            }
            scopes_.pop_back();
            if (stop) break;
        }
    }

    Val call_macro(const Node& m, const std::vector<Val>& args, const std::vector<std::pair<std::string, Val>>& kw) {
        Scope sc;
        for (size_t k = 0; k < m.vars.size(); ++k) {
            if (k < args.size()) sc[m.vars[k]] = args[k];
            else if (m.defaults[k]) sc[m.vars[k]] = eval(*m.defaults[k]);
            else sc[m.vars[k]] = Val::undef();
        }
        for (const auto& [k, v] : kw) sc[k] = v;
        std::string buf;
        std::string* saved = out_;
        out_ = &buf;
        scopes_.push_back(std::move(sc));
        try {
            exec(m.body);
        } catch (...) {
            scopes_.pop_back();
            out_ = saved;
            throw;
        }
        scopes_.pop_back();
        out_ = saved;
        return V(buf);
    }

    Val eval(const Expr& e) {
        switch (e.kind) {
            case EK::Lit: return V(e.value);
            case EK::Name: {
                if (Val* v = lookup(e.name)) return *v;
                return Val::undef();
            }
            case EK::Attr: {
                Val o = eval(*e.args[0]);
                if (o.j.is_object() && o.j.contains(e.name)) return V(o.j[e.name]);
                return Val::undef();
            }
            case EK::Index: {
                Val o = eval(*e.args[0]);
                Val k = eval(*e.args[1]);
                if (o.j.is_object() && k.j.is_string()) {
                    auto it = o.j.find(k.j.get<std::string>());
                    return it == o.j.end() ? Val::undef() : V(*it);
                }
                if ((o.j.is_array() || o.j.is_string()) && (k.j.is_number_integer() || k.j.is_number_unsigned())) {
                    if (o.j.is_array()) {
                        auto i = py_index(k.j.get<int64_t>(), o.j.size());
                        return i ? V(o.j[*i]) : Val::undef();
                    }
                    const std::string& s = o.j.get_ref<const std::string&>();
                    auto i = py_index(k.j.get<int64_t>(), s.size());
                    return i ? V(std::string(1, s[*i])) : Val::undef();
                }
                return Val::undef();
            }
            case EK::Slice: return slice(e);
            case EK::Call: return call(e);
            case EK::Filter: return filter(e);
            case EK::Test: {
                bool r = test(e);
                return V(e.negate ? !r : r);
            }
            case EK::Unary: {
                Val a = eval(*e.args[0]);
                if (e.name == "not") return V(!truthy(a));
                if (a.j.is_number_integer()) return V(-a.j.get<int64_t>());
                if (a.j.is_number()) return V(-a.j.get<double>());
                fail("unary '-' on " + type_name(a));
            }
            case EK::Binary: return binary(e);
            case EK::Cond: {
                if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
                return e.args.size() > 2 ? eval(*e.args[2]) : Val::undef();
            }
            case EK::List: {
                ojson l = ojson::array();
                for (const auto& a : e.args) l.push_back(eval(*a).j);
                return V(l);
            }
            case EK::Dict: {
                ojson d = ojson::object();
                for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
                    Val k = eval(*e.args[i]);
                    d[py_str(k.j)] = eval(*e.args[i + 1]).j;
                }
                return V(d);
            }
        }
        return Val::undef();
    }

    Val slice(const Expr& e) {
        Val o = eval(*e.args[0]);
        auto opt = [&](const ExprP& x) -> std::optional<int64_t> {
            if (!x) return std::nullopt;
            Val v = eval(*x);
            if (v.j.is_null()) return std::nullopt;
            return as_int(v, "slice");
        };
        auto a = opt(e.args[1]), b = opt(e.args[2]), st = opt(e.args[3]);
        int64_t step = st.value_or(1);
        if (step == 0) fail("slice step cannot be zero");
        bool is_str = o.j.is_string();
        if (!is_str && !o.j.is_array()) fail("cannot slice " + type_name(o));
        int64_t n = static_cast<int64_t>(is_str ? o.j.get_ref<const std::string&>().size() : o.j.size());
        auto norm = [&](std::optional<int64_t> v, int64_t def) {
            if (!v) return def;
            int64_t x = *v < 0 ? *v + n : *v;
            if (step > 0) return std::clamp<int64_t>(x, 0, n);
            return std::clamp<int64_t>(x, -1, n - 1);
        };
        int64_t from = norm(a, step > 0 ? 0 : n - 1), to = norm(b, step > 0 ? n : -1);
        if (is_str) {
            const std::string& s = o.j.get_ref<const std::string&>();
            std::string r;
            for (int64_t i = from; step > 0 ? i < to : i > to; i += step) r += s[static_cast<size_t>(i)];
            return V(r);
        }
        ojson r = ojson::array();
        for (int64_t i = from; step > 0 ? i < to : i > to; i += step) r.push_back(o.j[static_cast<size_t>(i)]);
        return V(r);
    }

    void eval_args(const Expr& e, size_t first, std::vector<Val>& args, std::vector<std::pair<std::string, Val>>& kw) {
        for (size_t i = first; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        for (const auto& [k, x] : e.kwargs) kw.emplace_back(k, eval(*x));
    }

    Val call(const Expr& e) {
        const Expr& callee = *e.args[0];
        std::vector<Val> args;
        std::vector<std::pair<std::string, Val>> kw;
        eval_args(e, 1, args, kw);
        auto arg = [&](size_t i, const char* name) -> const Val* {
            if (i < args.size()) return &args[i];
            for (auto& [k, v] : kw)
                if (k == name) return &v;
            return nullptr;
        };
        if (callee.kind == EK::Name) {
            const std::string& f = callee.name;
            if (Val* m = lookup(f); m && m->macro) return call_macro(*m->macro, args, kw);
            if (f == "namespace" || f == "dict") {
                ojson ns = ojson::object();
                for (auto& [k, v] : kw) ns[k] = v.j;
                return V(ns);
            }
            if (f == "raise_exception") {
                const Val* m = arg(0, "message");
                fail("the chat template raised: " + (m ? to_output(*m) : std::string()));
            }
            if (f == "range") {
                int64_t lo = 0, hi = 0, step = 1;
                if (args.size() == 1) hi = as_int(args[0], "range");
                else if (args.size() >= 2) lo = as_int(args[0], "range"), hi = as_int(args[1], "range");
                if (args.size() >= 3) step = as_int(args[2], "range");
                if (step == 0) fail("range() step cannot be zero");
                ojson r = ojson::array();
                for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step) r.push_back(i);
                return V(r);
            }
            fail("unknown function '" + f + "()'");
        }
        if (callee.kind == EK::Attr) {
            Val o = eval(*callee.args[0]);
            const std::string& m = callee.name;
            if (o.j.is_string()) {
                const std::string& s = o.j.get_ref<const std::string&>();
                auto sarg = [&](size_t i, const char* name) -> const std::string* {
                    const Val* v = arg(i, name);
                    if (!v || v->j.is_null() || v->undefined) return nullptr;
                    return &as_str(*v, m.c_str());
                };
                if (m == "split") {
                    const std::string* sep = sarg(0, "sep");
                    ojson r = ojson::array();
                    for (auto& p : split_str(s, sep ? std::optional<std::string>(*sep) : std::nullopt)) r.push_back(p);
                    return V(r);
                }
                if (m == "strip" || m == "lstrip" || m == "rstrip")
                    return V(strip_str(s, sarg(0, "chars"), m != "rstrip", m != "lstrip"));
                if (m == "startswith" || m == "endswith") {
                    const std::string* p = sarg(0, "prefix");
                    if (!p) fail(m + "() needs an argument");
                    bool r = m == "startswith" ? s.rfind(*p, 0) == 0
                                               : s.size() >= p->size() && s.compare(s.size() - p->size(), p->size(), *p) == 0;
                    return V(r);
                }
                if (m == "replace") {
                    const std::string* a = sarg(0, "old");
                    const std::string* b = sarg(1, "new");
                    if (!a || !b) fail("replace() needs two arguments");
                    if (a->empty()) fail("replace(): empty pattern");
                    std::string r;
                    size_t i = 0;
                    for (size_t k; (k = s.find(*a, i)) != std::string::npos; i = k + a->size()) r += s.substr(i, k - i) + *b;
                    return V(r + s.substr(i));
                }
                if (m == "lower" || m == "upper") {
                    std::string r = s;
                    for (char& c : r) c = static_cast<char>(m == "lower" ? std::tolower(static_cast<unsigned char>(c))
                                                                        : std::toupper(static_cast<unsigned char>(c)));
                    return V(r);
                }
                if (m == "find") {
                    const std::string* p = sarg(0, "sub");
                    if (!p) fail("find() needs an argument");
                    size_t k = s.find(*p);
                    return V(k == std::string::npos ? int64_t{-1} : static_cast<int64_t>(k));
                }
            } else if (o.j.is_object()) {
                if (m == "get") {
                    const Val* k = arg(0, "key");
                    if (!k) fail("get() needs a key");
                    auto it = o.j.find(py_str(k->j));
                    if (it != o.j.end()) return V(*it);
                    const Val* d = arg(1, "default");
                    return d ? *d : V(nullptr);
                }
                if (m == "items" || m == "keys" || m == "values") {
                    ojson r = ojson::array();
                    for (auto it = o.j.begin(); it != o.j.end(); ++it) {
                        if (m == "items") r.push_back(ojson::array({it.key(), it.value()}));
                        else if (m == "keys") r.push_back(it.key());
                        else r.push_back(it.value());
                    }
                    return V(r);
                }
            }
            fail("unknown method '" + m + "()' on " + type_name(o));
        }
        fail("this expression cannot be called");
    }

    Val filter(const Expr& e) {
        Val x = eval(*e.args[0]);
        std::vector<Val> args;
        std::vector<std::pair<std::string, Val>> kw;
        eval_args(e, 1, args, kw);
        const std::string& f = e.name;
        if (f == "length" || f == "count") {
            if (x.j.is_string()) {
                int64_t n = 0;  // code points
                for (unsigned char c : x.j.get_ref<const std::string&>()) n += (c & 0xC0) != 0x80;
                return V(n);
            }
            if (x.j.is_array() || x.j.is_object()) return V(static_cast<int64_t>(x.j.size()));
            if (x.undefined) return V(int64_t{0});
            fail("length of " + type_name(x));
        }
        if (f == "tojson") {
            int indent = -1;
            for (auto& [k, v] : kw)
                if (k == "indent" && !v.j.is_null()) indent = static_cast<int>(as_int(v, "tojson indent"));
            if (!args.empty() && !args[0].j.is_null()) indent = static_cast<int>(as_int(args[0], "tojson indent"));
            std::string out;
            py_json(x.j, indent, 0, out);
            return V(out);
        }
        if (f == "trim") return V(strip_str(as_str(x, "trim"), nullptr, true, true));
        if (f == "string") return V(to_output(x));
        if (f == "lower" || f == "upper") {
            std::string r = as_str(x, f.c_str());
            for (char& c : r) c = static_cast<char>(f == "lower" ? std::tolower(static_cast<unsigned char>(c))
                                                                 : std::toupper(static_cast<unsigned char>(c)));
            return V(r);
        }
        if (f == "default" || f == "d") {
            bool boolean = args.size() > 1 && truthy(args[1]);
            if (x.undefined || (boolean && !truthy(x))) return args.empty() ? V("") : args[0];
            return x;
        }
        if (f == "first" || f == "last") {
            if (!x.j.is_array() || x.j.empty()) return Val::undef();
            return V(f == "first" ? x.j.front() : x.j.back());
        }
        if (f == "join") {
            std::string sep = args.empty() ? "" : as_str(args[0], "join");
            std::string r;
            if (!x.j.is_array()) fail("join of " + type_name(x));
            for (size_t i = 0; i < x.j.size(); ++i) r += (i ? sep : "") + py_str(x.j[i]);
            return V(r);
        }
        if (f == "list") {
            if (x.j.is_array()) return x;
            fail("list of " + type_name(x));
        }
        if (f == "items") {
            if (!x.j.is_object()) fail("items of " + type_name(x));
            ojson r = ojson::array();
            for (auto it = x.j.begin(); it != x.j.end(); ++it) r.push_back(ojson::array({it.key(), it.value()}));
            return V(r);
        }
        if (f == "int") {
            if (x.j.is_number()) return V(static_cast<int64_t>(x.j.get<double>()));
            if (x.j.is_string()) {
                try {
                    return V(static_cast<int64_t>(std::stoll(x.j.get<std::string>())));
                } catch (...) {
                    return V(int64_t{0});
                }
            }
            return V(int64_t{0});
        }
        if (f == "replace") {
            if (args.size() < 2) fail("replace filter needs two arguments");
            const std::string& s = as_str(x, "replace");
            const std::string& a = as_str(args[0], "replace");
            const std::string& b = as_str(args[1], "replace");
            if (a.empty()) fail("replace(): empty pattern");
            std::string r;
            size_t i = 0;
            for (size_t k; (k = s.find(a, i)) != std::string::npos; i = k + a.size()) r += s.substr(i, k - i) + b;
            return V(r + s.substr(i));
        }
        fail("unknown filter '|" + f + "'");
    }

    bool test(const Expr& e) {
        Val x = eval(*e.args[0]);
        const std::string& t = e.name;
        if (t == "defined") return !x.undefined;
        if (t == "undefined") return x.undefined;
        if (t == "none") return !x.undefined && x.j.is_null();
        if (t == "string") return !x.undefined && x.j.is_string();
        if (t == "number") return !x.undefined && x.j.is_number();
        if (t == "integer") return !x.undefined && (x.j.is_number_integer() || x.j.is_number_unsigned());
        if (t == "boolean") return !x.undefined && x.j.is_boolean();
        if (t == "true") return !x.undefined && x.j.is_boolean() && x.j.get<bool>();
        if (t == "false") return !x.undefined && x.j.is_boolean() && !x.j.get<bool>();
        if (t == "mapping") return !x.undefined && x.j.is_object();
        if (t == "sequence" || t == "iterable")
            return !x.undefined && (x.j.is_array() || x.j.is_string() || x.j.is_object());
        if (t == "odd" || t == "even") {
            int64_t v = as_int(x, "odd/even test");
            return (v % 2 != 0) == (t == "odd");
        }
        if (t == "eq" || t == "equalto" || t == "sameas") {
            if (e.args.size() < 2) fail("test '" + t + "' needs an argument");
            return values_equal(x, eval(*e.args[1]));
        }
        if (t == "divisibleby") {
            if (e.args.size() < 2) fail("test 'divisibleby' needs an argument");
            int64_t d = as_int(eval(*e.args[1]), "divisibleby");
            return d != 0 && as_int(x, "divisibleby") % d == 0;
        }
        fail("unknown test 'is " + t + "'");
    }

    Val binary(const Expr& e) {
        const std::string& op = e.name;
        if (op == "and") {
            Val a = eval(*e.args[0]);
            return truthy(a) ? eval(*e.args[1]) : a;
        }
        if (op == "or") {
            Val a = eval(*e.args[0]);
            return truthy(a) ? a : eval(*e.args[1]);
        }
        Val a = eval(*e.args[0]);
        Val b = eval(*e.args[1]);
        if (op == "==") return V(values_equal(a, b));
        if (op == "!=") return V(!values_equal(a, b));
        if (op == "~") return V(to_output(a) + to_output(b));
        if (op == "in" || op == "not in") {
            bool r = false;
            if (b.j.is_string()) r = b.j.get_ref<const std::string&>().find(as_str(a, "in")) != std::string::npos;
            else if (b.j.is_array()) r = std::find(b.j.begin(), b.j.end(), a.j) != b.j.end();
            else if (b.j.is_object()) r = a.j.is_string() && b.j.contains(a.j.get<std::string>());
            else if (!b.undefined) fail("'in' on " + type_name(b));
            return V(op == "in" ? r : !r);
        }
        if (op == "+") {
            if (a.j.is_string() && b.j.is_string()) return V(a.j.get<std::string>() + b.j.get<std::string>());
            if (a.j.is_array() && b.j.is_array()) {
                ojson r = a.j;
                for (const auto& v : b.j) r.push_back(v);
                return V(r);
            }
        }
        if (a.j.is_number() && b.j.is_number() && !a.j.is_boolean() && !b.j.is_boolean()) {
            bool ints = !a.j.is_number_float() && !b.j.is_number_float();
            if (op == "<") return V(a.j.get<double>() < b.j.get<double>());
            if (op == ">") return V(a.j.get<double>() > b.j.get<double>());
            if (op == "<=") return V(a.j.get<double>() <= b.j.get<double>());
            if (op == ">=") return V(a.j.get<double>() >= b.j.get<double>());
            if (ints) {
                int64_t x = a.j.get<int64_t>(), y = b.j.get<int64_t>();
                if (op == "+") return V(x + y);
                if (op == "-") return V(x - y);
                if (op == "*") return V(x * y);
                if (op == "/") {
                    if (y == 0) fail("division by zero");
                    return V(static_cast<double>(x) / static_cast<double>(y));
                }
                if (op == "//" || op == "%") {
                    if (y == 0) fail("division by zero");
                    int64_t q = x / y, r = x % y;
                    if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
                    return V(op == "//" ? q : r);
                }
            } else {
                double x = a.j.get<double>(), y = b.j.get<double>();
                if (op == "+") return V(x + y);
                if (op == "-") return V(x - y);
                if (op == "*") return V(x * y);
                if (op == "/") {
                    if (y == 0) fail("division by zero");
                    return V(x / y);
                }
            }
        }
        if (a.j.is_string() && b.j.is_string() && (op == "<" || op == ">" || op == "<=" || op == ">=")) {
            int c = a.j.get<std::string>().compare(b.j.get<std::string>());
            return V(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
        }
        fail("operator '" + op + "' on " + type_name(a) + " and " + type_name(b));
    }
};

}  // namespace

std::string render(const Body& body, Scope globals) {
    std::string out;
    Interp in(out);
    for (auto& [k, v] : globals) in.set_global(k, std::move(v));
    try {
        in.exec(body);
    } catch (const BreakSignal&) {
        fail("{% break %} outside a loop");
    } catch (const ContinueSignal&) {
        fail("{% continue %} outside a loop");
    }
    return out;
}

}  // namespace ds3::jinja
