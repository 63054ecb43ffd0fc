// Byte-level BPE (see tokenizer.h for the pipeline and why each step is as it is).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "runtime/tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <queue>
#include <string>
#include <unordered_map>

#include "runtime/error.h"

namespace ds3 {

// ---- pre-tokenizer regexes ---------------------------------------------------------------
// DeepSeek-V3 / R1 / V3.1 tokenizer.json pre_tokenizer: Sequence of three Split(Isolated)
// regexes and ByteLevel(use_regex=false). The text is byte-for-byte that of the file (CR
// and LF inside the classes are the literal characters); the converter compares against it.
static const char* const kDeepseekV3[] = {
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

std::vector<std::string> pre_tokenizer_regexes(std::string_view pre) {
    if (pre == "deepseek-v3") return {std::begin(kDeepseekV3), std::end(kDeepseekV3)};
    return {};
}

std::string_view pre_tokenizer_name(const std::vector<std::string>& regexes) {
    if (regexes == pre_tokenizer_regexes("deepseek-v3")) return "deepseek-v3";
    return {};
}

// ---- UTF-8 ------------------------------------------------------------------------------
namespace {

// Length of the valid prefix of a UTF-8 sequence starting at s[0] (>= 1), and whether it
// is a complete character. Ranges follow Unicode table 3-7 (well-formed sequences).
struct Utf8Step {
    size_t len;
    bool complete;
};

Utf8Step utf8_step(const unsigned char* s, size_t n) {
    unsigned char b0 = s[0];
    if (b0 < 0x80) return {1, true};
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        return {1, false};
    }
    size_t k = 1;
    while (k < need && k < n) {
        unsigned char b = s[k];
        unsigned char l = (k == 1) ? lo : 0x80, h = (k == 1) ? hi : 0xBF;
        if (b < l || b > h) break;
        ++k;
    }
    return {k, k == need};
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Appends the UTF-8 encoding of code point cp.
void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// Decodes one valid UTF-8 character at s (caller guarantees validity).
uint32_t decode_utf8(const unsigned char* s, size_t len) {
    if (len == 1) return s[0];
    if (len == 2) return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    if (len == 3) return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
}

bool is_valid_utf8(std::string_view bytes) {
    auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
    size_t i = 0, n = bytes.size();
    while (i < n) {
        if (s[i] < 0x80) {
            ++i;
            continue;
        }
        Utf8Step st = utf8_step(s + i, n - i);
        if (!st.complete) return false;
        i += st.len;
    }
    return true;
}

}  // namespace

std::string utf8_lossy(std::string_view bytes) {
    if (is_valid_utf8(bytes)) return std::string(bytes);
    std::string out;
    out.reserve(bytes.size() + 8);
    auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
    size_t i = 0, n = bytes.size();
    while (i < n) {
        Utf8Step st = utf8_step(s + i, n - i);
        if (st.complete)
            out.append(bytes.substr(i, st.len));
        else
            out.append(kReplacement);
        i += st.len;
    }
    return out;
}

size_t utf8_stable_prefix(std::string_view bytes) {
    auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
    size_t n = bytes.size();
    // A truncated character is at most 3 bytes long and starts with a lead byte.
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        size_t start = n - back;
        if (s[start] < 0xC0) continue;  // ASCII or continuation: keep looking for a lead
        Utf8Step st = utf8_step(s + start, back);
        // Held back only when every byte so far is valid and more are needed.
        if (!st.complete && st.len == back) return start;
        return n;
    }
    return n;
}

// ---- the tokenizer ------------------------------------------------------------------------
namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100.. in byte order, so every byte has a visible, non-space character.
std::array<uint32_t, 256> byte_to_codepoint() {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        t[b] = printable ? b : next++;
    }
    return t;
}

struct Regex {
    pcre2_code* code = nullptr;
    bool jit = false;
};

// Added-token matcher: a byte trie, leftmost-longest as `tokenizers`' AddedVocabulary.
struct Trie {
    struct Node {
        int32_t token = -1;
        std::unordered_map<unsigned char, int32_t> next;
    };
    std::vector<Node> nodes{1};
    std::array<bool, 256> first{};

    void add(std::string_view s, int32_t id) {
        if (s.empty()) return;
        int32_t cur = 0;
        first[static_cast<unsigned char>(s[0])] = true;
        for (char ch : s) {
            auto c = static_cast<unsigned char>(ch);
            auto it = nodes[cur].next.find(c);
            if (it == nodes[cur].next.end()) {
                nodes.push_back({});
                int32_t idx = static_cast<int32_t>(nodes.size() - 1);
                nodes[cur].next.emplace(c, idx);
                cur = idx;
            } else {
                cur = it->second;
            }
        }
        if (nodes[cur].token < 0) nodes[cur].token = id;
    }
    // Longest token starting at text[pos]: (id, length) or (-1, 0).
    std::pair<int32_t, size_t> match(std::string_view text, size_t pos) const {
        int32_t cur = 0, best = -1;
        size_t best_len = 0;
        for (size_t i = pos; i < text.size(); ++i) {
            auto it = nodes[cur].next.find(static_cast<unsigned char>(text[i]));
            if (it == nodes[cur].next.end()) break;
            cur = it->second;
            if (nodes[cur].token >= 0) {
                best = nodes[cur].token;
                best_len = i - pos + 1;
            }
        }
        return {best, best_len};
    }
};

struct PairHash {
    size_t operator()(uint64_t k) const { return static_cast<size_t>(k * 0x9E3779B97F4A7C15ull >> 17); }
};

}  // namespace

struct Tokenizer::Impl {
    TokenizerData data;
    std::vector<std::string> bytes;                     // id -> decoded bytes
    std::unordered_map<std::string, int32_t> index;    // stored text -> id
    std::array<int32_t, 256> byte_id{};                // byte -> id of its byte-level symbol
    struct Merge {
        int32_t rank;
        int32_t id;
    };
    std::unordered_map<uint64_t, Merge, PairHash> merges;  // (left id, right id) -> merge
    std::vector<Regex> regexes;
    Trie added;
    bool has_added = false;

    // Per-piece BPE results. Bounded: cleared when it reaches kCacheMax entries, which
    // keeps memory flat on long inputs while repeated words stay hot.
    static constexpr size_t kCacheMax = 1 << 16;
    mutable std::mutex cache_mu;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    ~Impl() {
        for (auto& r : regexes) pcre2_code_free(r.code);
    }

    void split_regex(const Regex& re, pcre2_match_data* md, std::string_view piece,
                     std::vector<std::string_view>& out) const;
    void pre_tokenize_segment(std::string_view seg, pcre2_match_data* md,
                              std::vector<std::string_view>& out) const;
    void bpe(std::string_view piece, std::vector<int32_t>& out) const;
    // Cuts added tokens out of text: calls on_text(segment) and on_token(id) in order.
    template <class F, class G>
    void split_added(std::string_view text, bool parse_special, F on_text, G on_token) const;
};

Tokenizer::Tokenizer(TokenizerData data) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.data = std::move(data);
    const TokenizerData& d = m.data;
    auto fail = [](const std::string& msg) { throw Error("tokenizer", msg); };

    if (d.model != "gpt2")
        fail("tokenizer.ggml.model: expected \"gpt2\" (byte-level BPE), found \"" + d.model + "\"");
    std::vector<std::string> res = pre_tokenizer_regexes(d.pre);
    if (res.empty()) fail("tokenizer.ggml.pre: unknown pre-tokenizer \"" + d.pre + "\" (ds3 knows deepseek-v3)");
    if (d.tokens.empty()) fail("empty vocabulary");
    if (d.types.size() != d.tokens.size())
        fail("token_type has " + std::to_string(d.types.size()) + " entries, tokens has " +
             std::to_string(d.tokens.size()));

    for (const std::string& r : res) {
        int err = 0;
        PCRE2_SIZE off = 0;
        pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(r.data()), r.size(),
                                         PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
        if (!code) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(err, buf, sizeof buf);
            fail("pre-tokenizer regex does not compile at offset " + std::to_string(off) + ": " +
                 reinterpret_cast<char*>(buf));
        }
        Regex re{code, pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0};
        m.regexes.push_back(re);
    }

    // Byte-level table, inverted: code point -> byte.
    auto b2c = byte_to_codepoint();
    std::unordered_map<uint32_t, unsigned char> c2b;
    for (int b = 0; b < 256; ++b) c2b.emplace(b2c[b], static_cast<unsigned char>(b));

    const int32_t n = static_cast<int32_t>(d.tokens.size());
    m.bytes.resize(n);
    m.index.reserve(n);
    for (int32_t i = 0; i < n; ++i) {
        const std::string& t = d.tokens[i];
        if (d.types[i] != TokenType::Unused) m.index.emplace(t, i);
        // ByteLevel decoder: every character must be in the table, else the token's own text.
        std::string out;
        bool all = is_valid_utf8(t);
        auto* s = reinterpret_cast<const unsigned char*>(t.data());
        for (size_t p = 0; all && p < t.size();) {
            Utf8Step st = utf8_step(s + p, t.size() - p);
            auto it = c2b.find(decode_utf8(s + p, st.len));
            if (it == c2b.end()) {
                all = false;
                break;
            }
            out += static_cast<char>(it->second);
            p += st.len;
        }
        m.bytes[i] = all ? std::move(out) : t;
        // Padding entries ("[PAD129046]", filling the vocabulary up to the output matrix's
        // rows) are ids Hugging Face's tokenizer does not have: they decode to nothing, as
        // `tokenizers` skips unknown ids, rather than printing a placeholder.
        if (d.types[i] == TokenType::Unused) m.bytes[i].clear();
        if ((d.types[i] == TokenType::Control || d.types[i] == TokenType::UserDefined) && !t.empty()) {
            m.added.add(t, i);
            m.has_added = true;
        }
    }
    for (int b = 0; b < 256; ++b) {
        std::string sym;
        append_utf8(sym, b2c[b]);
        auto it = m.index.find(sym);
        m.byte_id[b] = it == m.index.end() ? -1 : it->second;
    }

    m.merges.reserve(d.merges.size() * 2);
    std::string joined;
    for (size_t r = 0; r < d.merges.size(); ++r) {
        const std::string& mg = d.merges[r];
        size_t sp = mg.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= mg.size())
            fail("merge " + std::to_string(r) + " \"" + mg + "\": expected \"a b\"");
        std::string_view a(mg.data(), sp), b(mg.data() + sp + 1, mg.size() - sp - 1);
        auto ia = m.index.find(std::string(a));
        auto ib = m.index.find(std::string(b));
        joined.assign(a).append(b);
        auto ij = m.index.find(joined);
        if (ia == m.index.end() || ib == m.index.end() || ij == m.index.end())
            fail("merge " + std::to_string(r) + " \"" + mg + "\": a part or the result is not a token");
        uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
        // A repeated pair keeps its last rank, as `tokenizers` builds its merge map.
        m.merges.insert_or_assign(key, Impl::Merge{static_cast<int32_t>(r), ij->second});
    }
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->data.tokens.size()); }
const TokenizerData& Tokenizer::data() const { return impl_->data; }

static void check_id(const Tokenizer& t, int32_t id) {
    if (!t.is_valid(id))
        throw Error("tokenizer", "token id " + std::to_string(id) + " out of range [0, " +
                                     std::to_string(t.n_vocab()) + ")");
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
    check_id(*this, id);
    return impl_->bytes[id];
}
const std::string& Tokenizer::token_text(int32_t id) const {
    check_id(*this, id);
    return impl_->data.tokens[id];
}
TokenType Tokenizer::token_type(int32_t id) const {
    check_id(*this, id);
    return impl_->data.types[id];
}
std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
    auto it = impl_->index.find(std::string(text));
    if (it == impl_->index.end()) return std::nullopt;
    return it->second;
}

// Split with behaviour Isolated: every match and every non-empty gap is a piece. The
// piece alone is the subject, so lookarounds cannot see past its ends (as in `tokenizers`).
void Tokenizer::Impl::split_regex(const Regex& re, pcre2_match_data* md, std::string_view piece,
                                  std::vector<std::string_view>& out) const {
    auto subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t pos = 0, last = 0;
    while (pos <= piece.size()) {
        int rc = re.jit ? pcre2_jit_match(re.code, subject, piece.size(), pos, 0, md, nullptr)
                        : pcre2_match(re.code, subject, piece.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc < 0) {
            if (rc == PCRE2_ERROR_NOMATCH) break;
            throw Error("tokenizer", "pre-tokenizer regex match failed with PCRE2 error " + std::to_string(rc));
        }
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], e = ov[1];
        if (s > last) out.push_back(piece.substr(last, s - last));
        if (e > s) {
            out.push_back(piece.substr(s, e - s));
            last = pos = e;
        } else {
            // Empty match: step over one character (none of our patterns can match empty).
            pos = s + 1;
            while (pos < piece.size() && (static_cast<unsigned char>(piece[pos]) & 0xC0) == 0x80) ++pos;
            last = s;
        }
    }
    if (last < piece.size()) out.push_back(piece.substr(last));
}

void Tokenizer::Impl::pre_tokenize_segment(std::string_view seg, pcre2_match_data* md,
                                           std::vector<std::string_view>& out) const {
    std::vector<std::string_view> cur{seg}, next;
    for (const Regex& re : regexes) {
        next.clear();
        for (std::string_view p : cur) split_regex(re, md, p, next);
        cur.swap(next);
    }
    out.insert(out.end(), cur.begin(), cur.end());
}

// BPE over one piece, as `tokenizers`' Word::merge_all: a min-heap of candidate merges
// ordered by (rank, position); stale entries are skipped when popped.
void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
    struct Sym {
        int32_t id;
        int32_t prev, next;
        bool alive;
    };
    std::vector<Sym> syms;
    syms.reserve(piece.size());
    for (char ch : piece) {
        int32_t id = byte_id[static_cast<unsigned char>(ch)];
        if (id < 0) continue;  // byte without a symbol in this vocabulary: dropped (no unk)
        int32_t i = static_cast<int32_t>(syms.size());
        syms.push_back({id, i - 1, i + 1, true});
    }
    if (syms.empty()) return;
    syms.back().next = -1;
    if (syms.size() == 1) {
        out.push_back(syms[0].id);
        return;
    }
    struct Cand {
        int32_t rank, pos, id;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto find = [&](int32_t a, int32_t b) -> const Merge* {
        auto it = merges.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
        return it == merges.end() ? nullptr : &it->second;
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i)
        if (const Merge* mg = find(syms[i].id, syms[i + 1].id)) heap.push({mg->rank, i, mg->id});
    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        Sym& s = syms[c.pos];
        if (!s.alive || s.next < 0) continue;
        Sym& nx = syms[s.next];
        const Merge* mg = find(s.id, nx.id);
        if (!mg || mg->id != c.id) continue;  // stale: a neighbour merged first
        s.id = c.id;
        nx.alive = false;
        s.next = nx.next;
        if (s.next >= 0) syms[s.next].prev = c.pos;
        if (s.prev >= 0)
            if (const Merge* p = find(syms[s.prev].id, s.id)) heap.push({p->rank, s.prev, p->id});
        if (s.next >= 0)
            if (const Merge* p = find(s.id, syms[s.next].id)) heap.push({p->rank, c.pos, p->id});
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

template <class F, class G>
void Tokenizer::Impl::split_added(std::string_view text, bool parse_special, F on_text, G on_token) const {
    if (!parse_special || !has_added) {
        if (!text.empty()) on_text(text);
        return;
    }
    size_t last = 0, i = 0;
    while (i < text.size()) {
        if (!added.first[static_cast<unsigned char>(text[i])]) {
            ++i;
            continue;
        }
        auto [id, len] = added.match(text, i);
        if (id < 0) {
            ++i;
            continue;
        }
        if (i > last) on_text(text.substr(last, i - last));
        on_token(id);
        i += len;
        last = i;
    }
    if (last < text.size()) on_text(text.substr(last));
}

namespace {
struct MatchData {
    pcre2_match_data* md;
    MatchData() : md(pcre2_match_data_create(4, nullptr)) {
        if (!md) throw Error("tokenizer", "out of memory creating PCRE2 match data");
    }
    ~MatchData() { pcre2_match_data_free(md); }
};
}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
    const Impl& m = *impl_;
    std::string repaired;
    if (!is_valid_utf8(text)) {
        repaired = utf8_lossy(text);
        text = repaired;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 2);
    if (opt.add_bos && m.data.bos_id) ids.push_back(*m.data.bos_id);
    MatchData md;
    std::vector<std::string_view> pieces;
    std::vector<int32_t> tmp;
    m.split_added(
        text, opt.parse_special,
        [&](std::string_view seg) {
            pieces.clear();
            m.pre_tokenize_segment(seg, md.md, pieces);
            for (std::string_view p : pieces) {
                if (p.size() == 1) {  // single byte: no merge possible, skip the cache
                    if (int32_t id = m.byte_id[static_cast<unsigned char>(p[0])]; id >= 0) ids.push_back(id);
                    continue;
                }
                {
                    std::lock_guard<std::mutex> lk(m.cache_mu);
                    auto it = m.cache.find(std::string(p));
                    if (it != m.cache.end()) {
                        ids.insert(ids.end(), it->second.begin(), it->second.end());
                        continue;
                    }
                }
                tmp.clear();
                m.bpe(p, tmp);
                ids.insert(ids.end(), tmp.begin(), tmp.end());
                std::lock_guard<std::mutex> lk(m.cache_mu);
                if (m.cache.size() >= Impl::kCacheMax) m.cache.clear();
                m.cache.emplace(std::string(p), tmp);
            }
        },
        [&](int32_t id) { ids.push_back(id); });
    if (opt.add_eos && m.data.eos_id) ids.push_back(*m.data.eos_id);
    return ids;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text, bool parse_special) const {
    const Impl& m = *impl_;
    std::string repaired;
    if (!is_valid_utf8(text)) {
        repaired = utf8_lossy(text);
        text = repaired;
    }
    MatchData md;
    std::vector<std::string> out;
    std::vector<std::string_view> pieces;
    m.split_added(
        text, parse_special,
        [&](std::string_view seg) {
            pieces.clear();
            m.pre_tokenize_segment(seg, md.md, pieces);
            for (auto p : pieces) out.emplace_back(p);
        },
        [&](int32_t id) { out.push_back(m.data.tokens[id]); });
    return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_control) const {
    std::string raw;
    for (int32_t id : ids) {
        check_id(*this, id);
        if (skip_control && impl_->data.types[id] == TokenType::Control) continue;
        raw += impl_->bytes[id];
    }
    return utf8_lossy(raw);
}

std::string StreamDecoder::push(int32_t id) {
    check_id(*tok_, id);
    if (skip_control_ && tok_->token_type(id) == TokenType::Control) return {};
    pending_ += tok_->token_bytes(id);
    size_t n = utf8_stable_prefix(pending_);
    std::string out = utf8_lossy(std::string_view(pending_).substr(0, n));
    pending_.erase(0, n);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out = utf8_lossy(pending_);
    pending_.clear();
    return out;
}

}  // namespace ds3
