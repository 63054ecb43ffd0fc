// A Jinja2 subset, enough for the DeepSeek chat templates (see chat_template.h).
// Values are nlohmann::ordered_json (Python dicts keep insertion order, and `tojson` shows
// it) plus an "undefined" flag; namespaces are JSON objects mutated in place.
#include "runtime/chat_template.h"

#include <cmath>
#include <functional>
#include <map>
#include <optional>

#include "runtime/error.h"

namespace ds3 {

using ojson = nlohmann::ordered_json;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("template", msg); }

// ---- template text -> segments --------------------------------------------------------
enum class SegKind { Text, Expr, Stmt };
struct Segment {
    SegKind kind;
    std::string text;
    size_t offset;  // in the source, for messages
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Splits the source applying whitespace control ({%- -%}) and transformers' settings
// trim_blocks (drop the newline after a block tag) and lstrip_blocks (drop indentation
// before a block tag that starts a line).
std::vector<Segment> lex_template(const std::string& src) {
    std::vector<Segment> out;
    size_t pos = 0, n = src.size();
    bool strip_next = false, trim_next = false;
    auto push_text = [&](std::string t, size_t off) {
        if (strip_next) {
            size_t k = 0;
            while (k < t.size() && is_space(t[k])) ++k;
            t.erase(0, k);
        } else if (trim_next) {
            if (t.rfind("\r\n", 0) == 0) t.erase(0, 2);
            else if (!t.empty() && t[0] == '\n') t.erase(0, 1);
        }
        strip_next = trim_next = false;
        out.push_back({SegKind::Text, std::move(t), off});
    };
    while (pos < n) {
        size_t start = src.find('{', pos);
        while (start != std::string::npos && start + 1 < n && src[start + 1] != '{' && src[start + 1] != '%' &&
               src[start + 1] != '#')
            start = src.find('{', start + 1);
        if (start == std::string::npos || start + 1 >= n) {
            push_text(src.substr(pos), pos);
            break;
        }
        char kind = src[start + 1];
        std::string text = src.substr(pos, start - pos);
        size_t body = start + 2;
        char mod = body < n ? src[body] : '\0';
        if (mod == '-') {
            while (!text.empty() && is_space(text.back())) text.pop_back();
            ++body;
        } else if (mod == '+') {
            ++body;
        } else if (kind != '{') {
            // lstrip_blocks: only spaces/tabs between the line start and the tag.
            size_t k = text.size();
            while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
            bool line_start = k > 0 ? text[k - 1] == '\n' : (pos == 0 || src[pos - 1] == '\n');
            if (line_start) text.erase(k);
        }
        push_text(std::move(text), pos);
        // Find the closing delimiter, skipping string literals inside the tag.
        std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        size_t i = body;
        char quote = 0;
        size_t end = std::string::npos;
        for (; i < n; ++i) {
            char c = src[i];
            if (kind != '#' && quote) {
                if (c == '\\') ++i;
                else if (c == quote) quote = 0;
                continue;
            }
            if (kind != '#' && (c == '\'' || c == '"')) {
                quote = c;
                continue;
            }
            if (src.compare(i, 2, close) == 0) {
                end = i;
                break;
            }
        }
        if (end == std::string::npos) fail("unclosed '{" + std::string(1, kind) + "' at offset " + std::to_string(start));
        size_t inner_end = end;
        bool strip_after = false;
        if (inner_end > body && src[inner_end - 1] == '-') {
            strip_after = true;
            --inner_end;
        }
        if (kind != '#')
            out.push_back({kind == '{' ? SegKind::Expr : SegKind::Stmt, src.substr(body, inner_end - body), start});
        pos = end + 2;
        if (strip_after) strip_next = true;
        else if (kind != '{') trim_next = true;
    }
    return out;
}

// ---- expressions ------------------------------------------------------------------------
enum class Tok { Name, Str, Int, Float, Op, End };
struct Token {
    Tok kind;
    std::string text;
};

std::vector<Token> lex_expr(const std::string& s, size_t where) {
    std::vector<Token> out;
    size_t i = 0, n = s.size();
    while (i < n) {
        char c = s[i];
        if (is_space(c)) {
            ++i;
            continue;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i;
            while (j < n && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
            out.push_back({Tok::Name, s.substr(i, j - i)});
            i = j;
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t j = i;
            while (j < n && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
            bool is_float = j + 1 < n && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
            if (is_float) {
                ++j;
                while (j < n && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
            }
            out.push_back({is_float ? Tok::Float : Tok::Int, s.substr(i, j - i)});
            i = j;
        } else if (c == '\'' || c == '"') {
            std::string v;
            size_t j = i + 1;
            for (; j < n && s[j] != c; ++j) {
                if (s[j] == '\\' && j + 1 < n) {
                    char e = s[++j];
                    switch (e) {
                        case 'n': v += '\n'; break;
                        case 't': v += '\t'; break;
                        case 'r': v += '\r'; break;
                        case '\\': v += '\\'; break;
                        case '\'': v += '\''; break;
                        case '"': v += '"'; break;
                        default: v += '\\'; v += e; break;
                    }
                } else {
                    v += s[j];
                }
            }
            if (j >= n) fail("unterminated string in tag at offset " + std::to_string(where));
            out.push_back({Tok::Str, v});
            i = j + 1;
        } else {
            static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",",
                                        ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
            bool found = false;
            for (const char* op : ops) {
                size_t len = std::char_traits<char>::length(op);
                if (s.compare(i, len, op) == 0) {
                    out.push_back({Tok::Op, op});
                    i += len;
                    found = true;
                    break;
                }
            }
            if (!found) fail(std::string("unexpected character '") + c + "' in tag at offset " + std::to_string(where));
        }
    }
    out.push_back({Tok::End, ""});
    return out;
}

struct Expr;
using ExprP = std::shared_ptr<Expr>;
enum class EK { Lit, Name, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, Cond, List, Dict };
struct Expr {
    EK kind;
    std::string name;          // Name, Attr, Filter, Test, operators
    ojson value;               // Lit
    std::vector<ExprP> args;   // operands / call args / list items / dict k,v pairs
    std::vector<std::pair<std::string, ExprP>> kwargs;
    bool negate = false;       // `is not`
};

ExprP mk(EK k, std::string name = {}, std::vector<ExprP> args = {}) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->name = std::move(name);
    e->args = std::move(args);
    return e;
}

class Parser {
public:
    Parser(std::vector<Token> toks, size_t where) : t_(std::move(toks)), where_(where) {}

    const Token& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
    bool at_end() const { return peek().kind == Tok::End; }
    bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Tok::Op && peek(k).text == op; }
    bool is_name(const char* nm, size_t k = 0) const { return peek(k).kind == Tok::Name && peek(k).text == nm; }
    Token next() { return t_[p_ < t_.size() - 1 ? p_++ : p_]; }
    void expect_op(const char* op) {
        if (!is_op(op)) error(std::string("expected '") + op + "'");
        ++p_;
    }
    std::string expect_name() {
        if (peek().kind != Tok::Name) error("expected a name");
        return next().text;
    }
    [[noreturn]] void error(const std::string& what) const {
        fail(what + " near '" + peek().text + "' in tag at offset " + std::to_string(where_));
    }

    // An expression without the `a if b else c` form (a for loop's iterable).
    ExprP expression_no_cond() { return or_expr(); }

    ExprP expression() {
        ExprP e = or_expr();
        if (is_name("if")) {
            ++p_;
            ExprP cond = or_expr();
            ExprP other;
            if (is_name("else")) {
                ++p_;
                other = expression();
            }
            auto c = mk(EK::Cond, "", {cond, e});
            if (other) c->args.push_back(other);
            return c;
        }
        return e;
    }

private:
    ExprP or_expr() {
        ExprP e = and_expr();
        while (is_name("or")) {
            ++p_;
            e = mk(EK::Binary, "or", {e, and_expr()});
        }
        return e;
    }
    ExprP and_expr() {
        ExprP e = not_expr();
        while (is_name("and")) {
            ++p_;
            e = mk(EK::Binary, "and", {e, not_expr()});
        }
        return e;
    }
    ExprP not_expr() {
        if (is_name("not")) {
            ++p_;
            return mk(EK::Unary, "not", {not_expr()});
        }
        return compare();
    }
    ExprP compare() {
        ExprP e = math1();
        for (;;) {
            if (peek().kind == Tok::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                           peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
                std::string op = next().text;
                e = mk(EK::Binary, op, {e, math1()});
            } else if (is_name("in")) {
                ++p_;
                e = mk(EK::Binary, "in", {e, math1()});
            } else if (is_name("not") && is_name("in", 1)) {
                p_ += 2;
                e = mk(EK::Binary, "not in", {e, math1()});
            } else {
                return e;
            }
        }
    }
    ExprP math1() {
        ExprP e = concat();
        while (is_op("+") || is_op("-")) {
            std::string op = next().text;
            e = mk(EK::Binary, op, {e, concat()});
        }
        return e;
    }
    ExprP concat() {
        ExprP e = math2();
        while (is_op("~")) {
            ++p_;
            e = mk(EK::Binary, "~", {e, math2()});
        }
        return e;
    }
    ExprP math2() {
        ExprP e = unary();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            std::string op = next().text;
            e = mk(EK::Binary, op, {e, unary()});
        }
        return e;
    }
    ExprP unary() {
        if (is_op("-")) {
            ++p_;
            return mk(EK::Unary, "-", {unary()});
        }
        if (is_op("+")) {
            ++p_;
            return unary();
        }
        return postfix(primary());
    }
    void call_args(ExprP& call) {
        // after '(' ; fills args / kwargs until ')'
        while (!is_op(")")) {
            if (peek().kind == Tok::Name && is_op("=", 1)) {
                std::string k = next().text;
                ++p_;
                call->kwargs.emplace_back(k, expression());
            } else {
                call->args.push_back(expression());
            }
            if (!is_op(",")) break;
            ++p_;
        }
        expect_op(")");
    }
    ExprP postfix(ExprP e) {
        for (;;) {
            if (is_op(".")) {
                ++p_;
                e = mk(EK::Attr, expect_name(), {e});
            } else if (is_op("[")) {
                ++p_;
                ExprP a, b, c;
                bool slice = false;
                if (!is_op(":")) a = expression();
                if (is_op(":")) {
                    slice = true;
                    ++p_;
                    if (!is_op("]") && !is_op(":")) b = expression();
                    if (is_op(":")) {
                        ++p_;
                        if (!is_op("]")) c = expression();
                    }
                }
                expect_op("]");
                if (slice) {
                    auto s = mk(EK::Slice, "", {e, a, b, c});
                    e = s;
                } else {
                    e = mk(EK::Index, "", {e, a});
                }
            } else if (is_op("(")) {
                ++p_;
                auto c = mk(EK::Call, "", {e});
                call_args(c);
                e = c;
            } else if (is_op("|")) {
                ++p_;
                auto f = mk(EK::Filter, expect_name(), {e});
                if (is_op("(")) {
                    ++p_;
                    call_args(f);
                }
                e = f;
            } else if (is_name("is")) {
                ++p_;
                bool neg = false;
                if (is_name("not")) {
                    ++p_;
                    neg = true;
                }
                std::string test = expect_name();
                auto t = mk(EK::Test, test, {e});
                t->negate = neg;
                if (is_op("(")) {
                    ++p_;
                    call_args(t);
                } else if (peek().kind == Tok::Str || peek().kind == Tok::Int ||
                           (peek().kind == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                            !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
                    t->args.push_back(primary());  // `x is equalto y`
                }
                e = t;
            } else {
                return e;
            }
        }
    }
    ExprP primary() {
        Token tk = next();
        auto lit = [](ojson v) {
            auto e = mk(EK::Lit);
            e->value = std::move(v);
            return e;
        };
        switch (tk.kind) {
            case Tok::Str: {
                std::string s = tk.text;
                while (peek().kind == Tok::Str) s += next().text;  // adjacent literals concatenate
                return lit(s);
            }
            case Tok::Int: return lit(std::stoll(tk.text));
            case Tok::Float: return lit(std::stod(tk.text));
            case Tok::Name:
                if (tk.text == "true" || tk.text == "True") return lit(true);
                if (tk.text == "false" || tk.text == "False") return lit(false);
                if (tk.text == "none" || tk.text == "None") return lit(nullptr);
                return mk(EK::Name, tk.text);
            case Tok::Op:
                if (tk.text == "(") {
                    ExprP e = expression();
                    if (is_op(",")) {  // tuple -> list
                        auto l = mk(EK::List, "", {e});
                        while (is_op(",")) {
                            ++p_;
                            if (is_op(")")) break;
                            l->args.push_back(expression());
                        }
                        e = l;
                    }
                    expect_op(")");
                    return e;
                }
                if (tk.text == "[") {
                    auto l = mk(EK::List);
                    while (!is_op("]")) {
                        l->args.push_back(expression());
                        if (!is_op(",")) break;
                        ++p_;
                    }
                    expect_op("]");
                    return l;
                }
                if (tk.text == "{") {
                    auto d = mk(EK::Dict);
                    while (!is_op("}")) {
                        d->args.push_back(expression());
                        expect_op(":");
                        d->args.push_back(expression());
                        if (!is_op(",")) break;
                        ++p_;
                    }
                    expect_op("}");
                    return d;
                }
                break;
            case Tok::End: break;
        }
        --p_;
        error("unexpected token");
    }

    std::vector<Token> t_;
    size_t p_ = 0;
    size_t where_;
};

// ---- statements -------------------------------------------------------------------------
struct Node;
using Body = std::vector<std::shared_ptr<Node>>;
enum class NK { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue };
struct Node {
    NK kind;
    std::string text;                                 // Text; Set/SetBlock target; Macro name
    std::string attr;                                 // Set: `ns.attr`
    std::vector<std::string> vars;                    // For loop variables; Macro params
    std::vector<ExprP> defaults;                      // Macro param defaults (null = none)
    ExprP expr;                                       // Output, Set value, For iterable
    ExprP cond;                                       // For `if` filter
    std::vector<std::pair<ExprP, Body>> branches;     // If
    Body body, else_body;                             // For, Macro, SetBlock; If/For else
};

}  // namespace

struct ChatTemplate::Program {
    Body body;
};

namespace {

class TemplateParser {
public:
    explicit TemplateParser(std::vector<Segment> segs) : s_(std::move(segs)) {}

    Body parse_all() {
        std::string end_tag;
        Body b = parse_body({}, end_tag);
        return b;
    }

private:
    // Parses until a statement whose first word is in `stops`; that word goes to `stopped`
    // and the statement's parser is left positioned after its keyword.
    Body parse_body(const std::vector<std::string>& stops, std::string& stopped) {
        Body out;
        while (i_ < s_.size()) {
            const Segment& seg = s_[i_++];
            if (seg.kind == SegKind::Text) {
                if (!seg.text.empty()) {
                    auto n = std::make_shared<Node>();
                    n->kind = NK::Text;
                    n->text = seg.text;
                    out.push_back(n);
                }
                continue;
            }
            Parser p(lex_expr(seg.text, seg.offset), seg.offset);
            if (seg.kind == SegKind::Expr) {
                auto n = std::make_shared<Node>();
                n->kind = NK::Output;
                n->expr = p.expression();
                if (!p.at_end()) p.error("unexpected text after expression");
                out.push_back(n);
                continue;
            }
            std::string kw = p.expect_name();
            for (const auto& s : stops)
                if (kw == s) {
                    stopped = kw;
                    cur_ = std::make_unique<Parser>(std::move(p));
                    return out;
                }
            out.push_back(statement(kw, p, seg.offset));
        }
        if (!stops.empty()) fail("missing {% " + stops.back() + " %} at the end of the template");
        return out;
    }

    std::shared_ptr<Node> statement(const std::string& kw, Parser& p, size_t where) {
        auto n = std::make_shared<Node>();
        auto done = [&](Parser& q) {
            if (!q.at_end()) q.error("unexpected text at the end of the tag");
        };
        if (kw == "if") {
            n->kind = NK::If;
            ExprP cond = p.expression();
            done(p);
            for (;;) {
                std::string stop;
                Body b = parse_body({"elif", "else", "endif"}, stop);
                n->branches.emplace_back(cond, std::move(b));
                Parser& q = *cur_;
                if (stop == "elif") {
                    cond = q.expression();
                    done(q);
                    continue;
                }
                done(q);
                if (stop == "else") {
                    std::string stop2;
                    n->else_body = parse_body({"endif"}, stop2);
                    done(*cur_);
                }
                break;
            }
        } else if (kw == "for") {
            n->kind = NK::For;
            n->vars.push_back(p.expect_name());
            while (p.is_op(",")) {
                p.next();
                n->vars.push_back(p.expect_name());
            }
            if (!p.is_name("in")) p.error("expected 'in'");
            p.next();
            n->expr = p.expression_no_cond();
            if (p.is_name("if")) {
                p.next();
                n->cond = p.expression();
            }
            if (p.is_name("recursive")) p.error("recursive loops are not supported");
            done(p);
            std::string stop;
            n->body = parse_body({"else", "endfor"}, stop);
            done(*cur_);
            if (stop == "else") {
                n->else_body = parse_body({"endfor"}, stop);
                done(*cur_);
            }
        } else if (kw == "set") {
            std::string name = p.expect_name();
            std::string attr;
            if (p.is_op(".")) {
                p.next();
                attr = p.expect_name();
            }
            if (p.is_op("=")) {
                p.next();
                n->kind = NK::Set;
                n->text = name;
                n->attr = attr;
                n->expr = p.expression();
                done(p);
            } else {
                if (!attr.empty()) p.error("block set of an attribute is not supported");
                done(p);
                n->kind = NK::SetBlock;
                n->text = name;
                std::string stop;
                n->body = parse_body({"endset"}, stop);
                done(*cur_);
            }
        } else if (kw == "macro") {
            n->kind = NK::Macro;
            n->text = p.expect_name();
            p.expect_op("(");
            while (!p.is_op(")")) {
                n->vars.push_back(p.expect_name());
                ExprP def;
                if (p.is_op("=")) {
                    p.next();
                    def = p.expression();
                }
                n->defaults.push_back(def);
                if (!p.is_op(",")) break;
                p.next();
            }
            p.expect_op(")");
            done(p);
            std::string stop;
            n->body = parse_body({"endmacro"}, stop);
            done(*cur_);
        } else if (kw == "break" || kw == "continue") {
            n->kind = kw == "break" ? NK::Break : NK::Continue;
            done(p);
        } else {
            fail("unsupported statement '{% " + kw + " %}' at offset " + std::to_string(where));
        }
        return n;
    }

    std::vector<Segment> s_;
    size_t i_ = 0;
    std::unique_ptr<Parser> cur_;
};

}  // namespace

namespace {

// ---- values -----------------------------------------------------------------------------
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
Val V(ojson j) { return Val{std::move(j), false, nullptr}; }

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

std::string py_repr(const ojson& j);
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

// Python's json.dumps(x, ensure_ascii=False[, indent=n]): ", " / ": " separators without
// indent, "," / ": " with it; only control characters, quote and backslash are escaped.
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

// Python-style index normalisation; nullopt when out of range.
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

// ---- the interpreter ----------------------------------------------------------------------
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
    using Scope = std::map<std::string, Val>;
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

std::shared_ptr<const ChatTemplate::Program> ChatTemplate::compile(const std::string& src) {
    auto p = std::make_shared<ChatTemplate::Program>();
    p->body = TemplateParser(lex_template(src)).parse_all();
    return p;
}

const std::string& ChatTemplate::deepseek_v3_source() {
    static const std::string s =
        "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
        "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
        "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
        "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
        "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}"
        "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}"
        "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}"
        "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
        "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
        "tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + "
        "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + "
        "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
        "tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
        "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
        "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
        "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
        "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
        "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
        "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
        "{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + "
        "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}"
        "{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}"
        "{{'<｜Assistant｜>'}}{% endif %}";
    return s;
}

ChatTemplate::ChatTemplate(const TokenizerData& t) {
    auto text_of = [&](const std::optional<int32_t>& id) -> std::string {
        if (id && *id >= 0 && static_cast<size_t>(*id) < t.tokens.size()) return t.tokens[*id];
        return "";
    };
    bos_ = text_of(t.bos_id);
    eos_ = text_of(t.eos_id);
    if (t.chat_template.empty()) {
        warning_ = "the file has no chat template; using DeepSeek-V3's";
    } else {
        try {
            prog_ = compile(t.chat_template);
            return;
        } catch (const Error& e) {
            warning_ = "the file's chat template is outside ds3's Jinja subset (" + e.message() +
                       "); using DeepSeek-V3's";
        }
    }
    fallback_ = true;
    prog_ = compile(deepseek_v3_source());
}

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token)
    : prog_(compile(source)), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {}

ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render_json(const ojson& messages, bool add_generation_prompt, const ojson& extra) const {
    if (!messages.is_array()) fail("messages: expected an array");
    std::string out;
    Interp in(out);
    in.set_global("messages", V(messages));
    in.set_global("bos_token", V(bos_));
    in.set_global("eos_token", V(eos_));
    in.set_global("add_generation_prompt", V(add_generation_prompt));
    if (extra.is_object())
        for (auto it = extra.begin(); it != extra.end(); ++it) in.set_global(it.key(), V(it.value()));
    try {
        in.exec(prog_->body);
    } catch (const BreakSignal&) {
        fail("{% break %} outside a loop");
    } catch (const ContinueSignal&) {
        fail("{% continue %} outside a loop");
    }
    return out;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
    ojson msgs = ojson::array();
    for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
    return render_json(msgs, add_generation_prompt);
}

ojson parse_messages(const std::string& json_text) {
    ojson j;
    try {
        j = ojson::parse(json_text);
    } catch (const ojson::exception& e) {
        fail(std::string("messages: invalid JSON: ") + e.what());
    }
    if (!j.is_array()) fail(std::string("messages: expected a JSON array of {\"role\", \"content\"}, found ") + j.type_name());
    for (size_t i = 0; i < j.size(); ++i) {
        const ojson& m = j[i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
            fail("messages[" + std::to_string(i) + "]: expected an object with a string \"role\"");
        if (!m.contains("content") || !(m["content"].is_string() || m["content"].is_null()))
            fail("messages[" + std::to_string(i) + "]: expected a string (or null) \"content\"");
    }
    return j;
}

}  // namespace ds3
