// Every defect the GGUF reader rejects, each made by changing one thing in a valid
// in-memory image: the error is one line, names the file and what is wrong, and nothing
// crashes or allocates what the file merely claims.
#include <catch2/catch.hpp>

#include <cstring>
#include <optional>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
using namespace ds3::gguf;

namespace {

struct Bytes {
    std::vector<uint8_t> b;
    template <typename T>
    Bytes& put(T v) {
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        b.insert(b.end(), p, p + sizeof v);
        return *this;
    }
    Bytes& str(const std::string& s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Bytes& raw(const std::vector<uint8_t>& v) {
        b.insert(b.end(), v.begin(), v.end());
        return *this;
    }
};

struct RawKv {
    std::string key;
    uint32_t type;
    std::vector<uint8_t> value;  // encoded value
};
struct RawTensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    uint64_t offset = 0;
    std::optional<uint32_t> n_dims;  // overrides ne.size()
};

// A valid image unless a field is changed: two keys, two f32 tensors, data after them.
struct Image {
    std::string magic = "GGUF";
    uint32_t version = 3;
    std::optional<uint64_t> n_tensors, n_kv;
    uint64_t alignment = 32;  // used for padding only; the key is in kvs when wanted
    std::vector<RawKv> kvs = {
        {"general.architecture", 8, Bytes().str("deepseek2").b},
        {"list", 9, Bytes().put<uint32_t>(4).put<uint64_t>(3).put<uint32_t>(1).put<uint32_t>(2).put<uint32_t>(3).b},
    };
    std::vector<RawTensor> tensors = {{"a", {3, 2}, 0, 0, {}}, {"b", {5}, 0, 32, {}}};
    uint64_t data_size = 64;

    std::vector<uint8_t> build() const {
        Bytes o;
        o.b.insert(o.b.end(), magic.begin(), magic.end());
        o.put<uint32_t>(version);
        o.put<uint64_t>(n_tensors.value_or(tensors.size()));
        o.put<uint64_t>(n_kv.value_or(kvs.size()));
        for (const auto& kv : kvs) o.str(kv.key).put<uint32_t>(kv.type).raw(kv.value);
        for (const auto& t : tensors) {
            o.str(t.name).put<uint32_t>(t.n_dims.value_or(static_cast<uint32_t>(t.ne.size())));
            for (uint64_t d : t.ne) o.put<uint64_t>(d);
            o.put<uint32_t>(t.type).put<uint64_t>(t.offset);
        }
        while (o.b.size() % alignment) o.b.push_back(0);
        for (uint64_t i = 0; i < data_size; ++i) o.b.push_back(static_cast<uint8_t>(i));
        return o.b;
    }
};

File parse(const std::vector<uint8_t>& img) { return File::parse(img, "img.gguf"); }

// Parses and returns the error message ("" if it parsed).
std::string error_of(const std::vector<uint8_t>& img) {
    try {
        parse(img);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

#define CHECK_REJECTS(img, text)                                       \
    do {                                                               \
        const std::string msg_ = error_of(img);                        \
        INFO(msg_);                                                    \
        CHECK(msg_.rfind("[gguf] img.gguf: ", 0) == 0);                \
        CHECK(msg_.find('\n') == std::string::npos);                   \
        CHECK_THAT(msg_, Catch::Contains(text));                       \
    } while (0)

RawKv alignment_kv(uint32_t a) { return {"general.alignment", 4, Bytes().put<uint32_t>(a).b}; }

}  // namespace

TEST_CASE("the base image is valid", "[gguf][errors]") {
    const auto img = Image{}.build();
    const File f = parse(img);
    CHECK(f.tensors().size() == 2);
    CHECK(f.tensor("b").offset == 32);
    CHECK(f.get_array("list").items.size() == 3);
    CHECK(f.tensor_data(f.tensor("b"))[0] == 32);
}

TEST_CASE("bad magic and versions", "[gguf][errors]") {
    Image im;
    im.magic = "GGML";
    CHECK_REJECTS(im.build(), "bad magic \"GGML\", expected \"GGUF\"");
    im.magic = std::string("\x00\x01GG", 4);
    CHECK_REJECTS(im.build(), "bad magic \"\\x00\\x01GG\"");
    im = Image{};
    im.version = 1;
    CHECK_REJECTS(im.build(), "version 1 is not supported");
    im.version = 4;
    CHECK_REJECTS(im.build(), "unsupported GGUF version 4");
    im.version = 0x03000000;
    CHECK_REJECTS(im.build(), "big-endian");
    im.version = 2;
    CHECK(parse(im.build()).version() == 2);
    CHECK_REJECTS(std::vector<uint8_t>{}, "truncated: magic");
    CHECK_REJECTS(std::vector<uint8_t>({'G', 'G'}), "truncated: magic");
}

TEST_CASE("every truncation of the header or data is rejected", "[gguf][errors]") {
    const auto img = Image{}.build();
    const uint64_t data_offset = parse(img).data_offset();
    const uint64_t end_of_b = data_offset + 32 + 20;
    for (size_t n = 0; n < img.size(); ++n) {
        const std::vector<uint8_t> cut(img.begin(), img.begin() + static_cast<long>(n));
        const std::string msg = error_of(cut);
        INFO("prefix " << n << ": " << msg);
        if (n >= end_of_b) {
            CHECK(msg.empty());  // only padding after b's data is missing
            continue;
        }
        REQUIRE_FALSE(msg.empty());
        CHECK(msg.rfind("[gguf] img.gguf: ", 0) == 0);
        if (n >= data_offset) CHECK_THAT(msg, Catch::Contains("extends past the end of the file"));
    }
    // A few spots, with what is being read named.
    CHECK_REJECTS(std::vector<uint8_t>(img.begin(), img.begin() + 6), "truncated: version at offset 4");
    CHECK_REJECTS(std::vector<uint8_t>(img.begin(), img.begin() + 12), "truncated: tensor count");
}

TEST_CASE("counts the file cannot hold", "[gguf][errors]") {
    Image im;
    im.n_kv = 1ull << 60;
    CHECK_REJECTS(im.build(), "metadata count 1152921504606846976 cannot fit");
    im = Image{};
    im.n_tensors = ~0ull;
    CHECK_REJECTS(im.build(), "tensor count 18446744073709551615 cannot fit");
    im = Image{};
    im.n_kv = 3;  // one more than present: runs into the tensor infos and fails there
    CHECK_FALSE(error_of(im.build()).empty());
}

TEST_CASE("strings longer than the file", "[gguf][errors]") {
    Image im;
    im.kvs[0].value = Bytes().put<uint64_t>(1ull << 40).b;
    CHECK_REJECTS(im.build(), "key 'general.architecture': string value at offset");
    CHECK_REJECTS(im.build(), "has length 1099511627776, beyond the end of the file");
    im = Image{};
    im.kvs[0].value = Bytes().put<uint64_t>(~0ull).b;
    CHECK_REJECTS(im.build(), "beyond the end of the file");
    // A key's own length.
    auto img = Image{}.build();
    const uint64_t huge = 1ull << 50;
    std::memcpy(img.data() + 24, &huge, 8);
    CHECK_REJECTS(img, "metadata entry 0: key at offset 24 has length");
    // A tensor name.
    im = Image{};
    im.tensors[1].name = "bb";
    img = im.build();
    const std::string needle = "bb";
    auto it = std::search(img.begin(), img.end(), needle.begin(), needle.end());
    REQUIRE(it != img.end());
    std::memcpy(&*(it - 8), &huge, 8);
    CHECK_REJECTS(img, "tensor info 1: tensor name");
}

TEST_CASE("array counts beyond the file, bad value types, nesting", "[gguf][errors]") {
    Image im;
    im.kvs[1].value = Bytes().put<uint32_t>(4).put<uint64_t>(1ull << 61).b;
    CHECK_REJECTS(im.build(), "key 'list': array of 2305843009213693952 u32 elements needs at least 4 bytes each");
    im.kvs[1].value = Bytes().put<uint32_t>(8).put<uint64_t>(~0ull / 2).b;
    CHECK_REJECTS(im.build(), "string elements needs at least 8 bytes each");
    im.kvs[1].value = Bytes().put<uint32_t>(9).put<uint64_t>(1ull << 40).b;
    CHECK_REJECTS(im.build(), "array elements needs at least 12 bytes each");
    im = Image{};
    im.kvs[1].type = 13;
    CHECK_REJECTS(im.build(), "key 'list': unknown value type 13");
    im = Image{};
    im.kvs[1].value = Bytes().put<uint32_t>(99).put<uint64_t>(0).b;
    CHECK_REJECTS(im.build(), "unknown array element type 99");

    // Nesting: 8 levels are fine, 9 are not.
    auto nested = [](int levels) {
        Bytes v;
        for (int i = 0; i < levels - 1; ++i) v.put<uint32_t>(9).put<uint64_t>(1);
        v.put<uint32_t>(0).put<uint64_t>(1).put<uint8_t>(5);
        return v.b;
    };
    im = Image{};
    im.kvs[1].value = nested(8);
    CHECK(error_of(im.build()).empty());
    im.kvs[1].value = nested(9);
    CHECK_REJECTS(im.build(), "key 'list': arrays nested deeper than 8 levels");
    // Deep nesting of empty arrays is still bounded (no stack exhaustion).
    im.kvs[1].value = nested(100000);
    CHECK_REJECTS(im.build(), "nested deeper");
}

TEST_CASE("duplicate keys and tensor names", "[gguf][errors]") {
    Image im;
    im.kvs[1].key = "general.architecture";
    CHECK_REJECTS(im.build(), "key 'general.architecture': duplicate key");
    im = Image{};
    im.tensors[1].name = im.tensors[0].name;
    CHECK_REJECTS(im.build(), "tensor 'a': duplicate tensor name");
}

TEST_CASE("general.alignment", "[gguf][errors]") {
    Image im;
    im.kvs.push_back(alignment_kv(0));
    CHECK_REJECTS(im.build(), "general.alignment is 0, expected a non-zero power of two");
    im.kvs.back() = alignment_kv(48);
    CHECK_REJECTS(im.build(), "general.alignment is 48");
    im.kvs.back().type = 10;
    im.kvs.back().value = Bytes().put<uint64_t>(64).b;
    CHECK_REJECTS(im.build(), "general.alignment: expected u32, found u64");
    // 64 is honoured: b at 32 is then misaligned.
    im.kvs.back() = alignment_kv(64);
    im.alignment = 64;
    CHECK_REJECTS(im.build(), "tensor 'b': offset 32 is not a multiple of the alignment 64");
    im.tensors[1].offset = 64;
    im.data_size = 128;
    const auto img = im.build();
    const File f = parse(img);
    CHECK(f.alignment() == 64);
    CHECK(f.data_offset() % 64 == 0);
    // Alignment 1: offsets may be anything.
    im = Image{};
    im.kvs.push_back(alignment_kv(1));
    im.alignment = 1;
    im.tensors[1].offset = 24;
    CHECK(error_of(im.build()).empty());
}

TEST_CASE("tensor shape and type defects", "[gguf][errors]") {
    Image im;
    im.tensors[0].ne = {};
    CHECK_REJECTS(im.build(), "tensor 'a': n_dims is 0, expected 1 to 4");
    im.tensors[0].ne = {1, 1, 1, 1, 1};
    CHECK_REJECTS(im.build(), "tensor 'a': n_dims is 5");
    im = Image{};
    im.tensors[0].n_dims = 0x7fffffff;  // claims far more dims than are present
    CHECK_REJECTS(im.build(), "n_dims is 2147483647");
    im = Image{};
    im.tensors[0].ne = {1ull << 63, 1};
    CHECK_REJECTS(im.build(), "dimension 0 is 9223372036854775808, above 2^63-1");
    im.tensors[0].ne = {1ull << 32, 1ull << 32};
    CHECK_REJECTS(im.build(), "shape [4294967296, 4294967296] has more than 2^63-1 elements");
    im.tensors[0].ne = {1ull << 40, 1ull << 20, 1ull << 4};
    CHECK_REJECTS(im.build(), "more than 2^63-1 elements");
    im.tensors[0].ne = {1ull << 40, 1ull << 20, 1ull << 2};  // 2^62 f32 elements: 2^64 bytes
    CHECK_REJECTS(im.build(), "shape [1099511627776, 1048576, 4] of type f32 overflows 64-bit byte size");
    // Fits in elements but the byte size is past the end of the file.
    im.tensors[0].ne = {1ull << 40, 4};
    CHECK_REJECTS(im.build(), "tensor 'a': data [0, +17592186044416) from the data section at");
    im = Image{};
    im.tensors[0].type = 8;  // q8_0, block 32
    im.tensors[0].ne = {33, 1};
    CHECK_REJECTS(im.build(), "tensor 'a': ne[0] = 33 is not a multiple of q8_0's block size 32");
    im.tensors[0].type = 4;  // a retired ggml id
    CHECK_REJECTS(im.build(), "tensor 'a': unknown tensor type 4");
    im.tensors[0].type = 0xffffffff;
    CHECK_REJECTS(im.build(), "unknown tensor type 4294967295");
    // A zero-sized dimension is allowed: an empty tensor, with an empty view.
    im = Image{};
    im.tensors[0].ne = {0, 7};
    const auto img = im.build();
    const File f = parse(img);
    CHECK(f.tensor("a").nbytes == 0);
    CHECK(f.tensor_data(f.tensor("a")).empty());
}

TEST_CASE("offsets: misaligned, past the end, overlapping", "[gguf][errors]") {
    Image im;
    im.tensors[1].offset = 40;
    CHECK_REJECTS(im.build(), "tensor 'b': offset 40 is not a multiple of the alignment 32");
    im.tensors[1].offset = 64;
    CHECK_REJECTS(im.build(), "tensor 'b': data [64, +20)");
    im.tensors[1].offset = ~0ull - 31;  // aligned, and overflows when added to the data offset
    CHECK_REJECTS(im.build(), "extends past the end of the file");
    im.tensors[1].offset = 0;
    CHECK_REJECTS(im.build(), "overlaps tensor");
    im = Image{};
    im.data_size = 40;  // b needs [32, 52)
    CHECK_REJECTS(im.build(), "tensor 'b': data [32, +20) from the data section at 192 extends past the end of the file");
}
