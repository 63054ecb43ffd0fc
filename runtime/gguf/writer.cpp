// GGUF streaming writer. The header is written once all keys and tensor infos are known;
// tensor data then streams through a stdio buffer, hashed on the way. The checksum array
// is written as zeros in the header (it is the last key, so its position is known) and
// patched in place by finish(), which also fsyncs and renames the temporary file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>

#include <xxhash.h>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/gguf/internal.h"
#include "runtime/signals.h"

namespace ds3::gguf {

namespace {

enum class State { Adding, Header, InTensor, Finished, Failed };

std::string random_suffix() {
    std::random_device rd;
    const uint64_t r = (uint64_t{rd()} << 32) ^ rd();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%012llx", static_cast<unsigned long long>(r & 0xffffffffffffULL));
    return buf;
}

// Rejects values the reader would reject, so a writer can never produce a file that
// does not read back.
// Returns the defect or an empty string.
std::string check_value(const Value& v, int depth) {
    if (!detail::valid_value_type(static_cast<uint32_t>(v.type))) return "invalid value type";
    try {
        switch (v.type) {
            case ValueType::UINT8: if (v.as_u64() > 0xff) return "u8 out of range"; break;
            case ValueType::UINT16: if (v.as_u64() > 0xffff) return "u16 out of range"; break;
            case ValueType::UINT32: if (v.as_u64() > 0xffffffffu) return "u32 out of range"; break;
            case ValueType::INT8: if (v.as_i64() < -128 || v.as_i64() > 127) return "i8 out of range"; break;
            case ValueType::INT16: if (v.as_i64() < -32768 || v.as_i64() > 32767) return "i16 out of range"; break;
            case ValueType::INT32:
                if (v.as_i64() < INT32_MIN || v.as_i64() > INT32_MAX) return "i32 out of range";
                break;
            case ValueType::UINT64: v.as_u64(); break;
            case ValueType::INT64: v.as_i64(); break;
            case ValueType::FLOAT32: case ValueType::FLOAT64: v.as_f64(); break;
            case ValueType::BOOL: v.as_bool(); break;
            case ValueType::STRING: v.as_string(); break;
            case ValueType::ARRAY: {
                if (depth >= detail::kMaxArrayDepth)
                    return "arrays nested deeper than " + std::to_string(detail::kMaxArrayDepth) + " levels";
                const Array& a = v.as_array();
                if (!detail::valid_value_type(static_cast<uint32_t>(a.elem_type))) return "invalid array element type";
                for (size_t i = 0; i < a.items.size(); ++i) {
                    if (a.items[i].type != a.elem_type)
                        return "array element " + std::to_string(i) + " is " +
                               std::string(value_type_name(a.items[i].type)) + ", expected " +
                               std::string(value_type_name(a.elem_type));
                    std::string e = check_value(a.items[i], depth + 1);
                    if (!e.empty()) return "array element " + std::to_string(i) + ": " + e;
                }
                break;
            }
        }
    } catch (const Error& e) {
        return e.message();
    }
    return {};
}

}  // namespace

struct Writer::Impl {
    FILE* fp = nullptr;
    State state = State::Adding;
    std::set<std::string, std::less<>> names;
    uint64_t next_offset = 0;     // end of the last added tensor, relative to the data section
    uint64_t data_offset = 0;     // absolute
    uint64_t checksum_pos = 0;    // absolute position of the first checksum element; 0 = none
    size_t cur = 0;               // index of the next tensor to write
    uint64_t cur_written = 0;     // bytes of the current tensor so far
    XXH3_state_t* hash = nullptr;
    std::vector<uint64_t> sums;
    int guard = -1;
    std::vector<char> buf;
};

Writer::Writer(std::string out_path, uint64_t alignment)
    : impl_(std::make_unique<Impl>()), out_path_(std::move(out_path)), alignment_(alignment) {
    if (!detail::is_pow2(alignment_) || alignment_ > 0xffffffffu)
        throw Error("gguf", out_path_ + ": alignment " + std::to_string(alignment_) +
                                " is not a power of two that fits in u32");
    // Same directory as the output, so that the final rename is atomic.
    int fd = -1;
    for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
        tmp_path_ = out_path_ + ".tmp-" + std::to_string(getpid()) + "-" + random_suffix();
        fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0)
        throw Error("gguf", "cannot create " + tmp_path_ + ": " + std::strerror(errno));
    impl_->guard = register_temp_file(tmp_path_);
    impl_->fp = fdopen(fd, "wb");
    if (!impl_->fp) {
        const int e = errno;
        ::close(fd);
        ::unlink(tmp_path_.c_str());
        unregister_temp_file(impl_->guard);
        throw Error("gguf", "cannot open " + tmp_path_ + ": " + std::strerror(e));
    }
    impl_->buf.resize(4u << 20);
    std::setvbuf(impl_->fp, impl_->buf.data(), _IOFBF, impl_->buf.size());
    impl_->hash = XXH3_createState();
}

Writer::~Writer() {
    if (impl_->fp) std::fclose(impl_->fp);
    if (impl_->state != State::Finished) ::unlink(tmp_path_.c_str());
    unregister_temp_file(impl_->guard);
    if (impl_->hash) XXH3_freeState(impl_->hash);
}

namespace {

struct Out {
    FILE* fp;
    const std::string& path;
    uint64_t& written;

    void bytes(const void* p, size_t n) {
        if (n && std::fwrite(p, 1, n, fp) != n)
            throw Error("gguf", "write " + path + ": " + std::strerror(errno));
        written += n;
    }
    template <typename T>
    void put(T v) { bytes(&v, sizeof v); }
    void str(const std::string& s) {
        put<uint64_t>(s.size());
        bytes(s.data(), s.size());
    }
    void zeros(uint64_t n) {
        static const char z[4096] = {};
        while (n) {
            const size_t k = n < sizeof z ? static_cast<size_t>(n) : sizeof z;
            bytes(z, k);
            n -= k;
        }
    }
    void value(const Value& v) {
        switch (v.type) {
            case ValueType::UINT8: put<uint8_t>(static_cast<uint8_t>(v.as_u64())); break;
            case ValueType::INT8: put<int8_t>(static_cast<int8_t>(v.as_i64())); break;
            case ValueType::UINT16: put<uint16_t>(static_cast<uint16_t>(v.as_u64())); break;
            case ValueType::INT16: put<int16_t>(static_cast<int16_t>(v.as_i64())); break;
            case ValueType::UINT32: put<uint32_t>(static_cast<uint32_t>(v.as_u64())); break;
            case ValueType::INT32: put<int32_t>(static_cast<int32_t>(v.as_i64())); break;
            case ValueType::UINT64: put<uint64_t>(v.as_u64()); break;
            case ValueType::INT64: put<int64_t>(v.as_i64()); break;
            case ValueType::FLOAT32: put<float>(static_cast<float>(v.as_f64())); break;
            case ValueType::FLOAT64: put<double>(v.as_f64()); break;
            case ValueType::BOOL: put<uint8_t>(v.as_bool() ? 1 : 0); break;
            case ValueType::STRING: str(v.as_string()); break;
            case ValueType::ARRAY: {
                const Array& a = v.as_array();
                put<uint32_t>(static_cast<uint32_t>(a.elem_type));
                put<uint64_t>(a.items.size());
                for (const Value& item : a.items) value(item);
                break;
            }
        }
    }
};

}  // namespace

void Writer::set_kv(std::string key, Value value) {
    if (impl_->state != State::Adding)
        throw Error("gguf", out_path_ + ": set_kv('" + key + "') after write_header");
    if (key == kChecksumKey) return;  // the writer owns it; a copied one would be stale
    if (std::string err = check_value(value, 0); !err.empty())
        throw Error("gguf", out_path_ + ": key '" + key + "': " + err);
    if (key == "general.alignment" &&
        (value.type != ValueType::UINT32 || value.as_u64() != alignment_))
        throw Error("gguf", out_path_ + ": general.alignment must be the u32 " + std::to_string(alignment_) +
                                " given to the Writer");
    for (KeyValue& kv : kvs_)
        if (kv.key == key) {
            kv.value = std::move(value);
            return;
        }
    kvs_.push_back({std::move(key), std::move(value)});
}

void Writer::add_tensor(std::string name, std::vector<uint64_t> ne, TypeId type) {
    if (impl_->state != State::Adding)
        throw Error("gguf", out_path_ + ": add_tensor('" + name + "') after write_header");
    if (name.empty() || name.size() > detail::kMaxTensorName)
        throw Error("gguf", out_path_ + ": tensor name '" + name + "' must be 1 to " +
                                std::to_string(detail::kMaxTensorName) + " bytes");
    if (impl_->names.count(name)) throw Error("gguf", out_path_ + ": duplicate tensor name '" + name + "'");
    TensorInfo t;
    if (auto err = detail::check_tensor_shape(ne, static_cast<uint32_t>(type), t.nbytes))
        throw Error("gguf", out_path_ + ": tensor '" + name + "': " + *err);
    const uint64_t off = impl_->next_offset + (alignment_ - impl_->next_offset % alignment_) % alignment_;
    t.name = std::move(name);
    t.ne = std::move(ne);
    t.type = type;
    t.offset = off;
    impl_->next_offset = off + t.nbytes;
    impl_->names.insert(t.name);
    tensors_.push_back(std::move(t));
}

void Writer::write_header() {
    if (impl_->state != State::Adding) throw Error("gguf", out_path_ + ": write_header called twice");
    impl_->state = State::Failed;  // until it succeeds
    Out o{impl_->fp, tmp_path_, written_};

    std::vector<const KeyValue*> kvs;
    for (const KeyValue& kv : kvs_) kvs.push_back(&kv);
    KeyValue align_kv{"general.alignment", Value::u32(static_cast<uint32_t>(alignment_))};
    bool has_align = false;
    for (const KeyValue& kv : kvs_) has_align |= kv.key == "general.alignment";
    if (!has_align && alignment_ != kDefaultAlignment) kvs.push_back(&align_kv);

    o.bytes("GGUF", 4);
    o.put<uint32_t>(kVersion);
    o.put<uint64_t>(tensors_.size());
    o.put<uint64_t>(kvs.size() + (checksums_ ? 1 : 0));
    for (const KeyValue* kv : kvs) {
        o.str(kv->key);
        o.put<uint32_t>(static_cast<uint32_t>(kv->value.type));
        o.value(kv->value);
    }
    if (checksums_) {
        o.str(std::string(kChecksumKey));
        o.put<uint32_t>(static_cast<uint32_t>(ValueType::ARRAY));
        o.put<uint32_t>(static_cast<uint32_t>(ValueType::UINT64));
        o.put<uint64_t>(tensors_.size());
        impl_->checksum_pos = written_;
        o.zeros(8 * tensors_.size());
    }
    for (const TensorInfo& t : tensors_) {
        o.str(t.name);
        o.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
        for (uint64_t d : t.ne) o.put<uint64_t>(d);
        o.put<uint32_t>(static_cast<uint32_t>(t.type));
        o.put<uint64_t>(t.offset);
    }
    o.zeros((alignment_ - written_ % alignment_) % alignment_);
    impl_->data_offset = written_;
    impl_->sums.reserve(tensors_.size());
    impl_->state = State::Header;
}

void Writer::begin_tensor() {
    if (impl_->state != State::Header) {
        const char* why = impl_->state == State::InTensor ? "inside another tensor"
                          : impl_->state == State::Adding ? "before write_header"
                                                          : "after finish or an earlier error";
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": begin_tensor " + why);
    }
    if (impl_->cur >= tensors_.size()) {
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": tensor data beyond the " + std::to_string(tensors_.size()) +
                                " declared tensors");
    }
    impl_->state = State::Failed;
    Out o{impl_->fp, tmp_path_, written_};
    const TensorInfo& t = tensors_[impl_->cur];
    o.zeros(impl_->data_offset + t.offset - written_);
    impl_->cur_written = 0;
    XXH3_64bits_reset(impl_->hash);
    impl_->state = State::InTensor;
}

void Writer::write_chunk(std::span<const uint8_t> bytes) {
    if (impl_->state != State::InTensor) {
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": write_chunk outside begin_tensor/end_tensor");
    }
    const TensorInfo& t = tensors_[impl_->cur];
    if (bytes.size() > t.nbytes - impl_->cur_written) {
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": tensor '" + t.name + "': " +
                                std::to_string(impl_->cur_written + bytes.size()) + " bytes written, expected " +
                                std::to_string(t.nbytes));
    }
    impl_->state = State::Failed;
    Out o{impl_->fp, tmp_path_, written_};
    o.bytes(bytes.data(), bytes.size());
    if (checksums_) XXH3_64bits_update(impl_->hash, bytes.data(), bytes.size());
    impl_->cur_written += bytes.size();
    impl_->state = State::InTensor;
}

void Writer::end_tensor() {
    if (impl_->state != State::InTensor) {
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": end_tensor without begin_tensor");
    }
    const TensorInfo& t = tensors_[impl_->cur];
    if (impl_->cur_written != t.nbytes) {
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": tensor '" + t.name + "': " + std::to_string(impl_->cur_written) +
                                " bytes written, expected " + std::to_string(t.nbytes));
    }
    impl_->sums.push_back(XXH3_64bits_digest(impl_->hash));
    ++impl_->cur;
    impl_->state = State::Header;
}

void Writer::write_tensor_data(std::span<const uint8_t> bytes) {
    begin_tensor();
    write_chunk(bytes);
    end_tensor();
}

void Writer::finish() {
    if (impl_->state == State::Adding) write_header();
    if (impl_->state != State::Header || impl_->cur != tensors_.size()) {
        const bool failed = impl_->state == State::Failed;
        impl_->state = State::Failed;
        throw Error("gguf", out_path_ + ": finish() " +
                                (failed ? std::string("after an earlier error")
                                        : "with " + std::to_string(impl_->cur) + " of " +
                                              std::to_string(tensors_.size()) + " tensors written"));
    }
    impl_->state = State::Failed;
    Out o{impl_->fp, tmp_path_, written_};
    o.zeros((alignment_ - written_ % alignment_) % alignment_);
    auto io_fail = [&](const char* what) {
        throw Error("gguf", std::string(what) + " " + tmp_path_ + ": " + std::strerror(errno));
    };
    if (std::fflush(impl_->fp) != 0) io_fail("write");
    const int fd = fileno(impl_->fp);
    if (checksums_ && !impl_->sums.empty()) {
        const size_t n = impl_->sums.size() * sizeof(uint64_t);
        if (::pwrite(fd, impl_->sums.data(), n, static_cast<off_t>(impl_->checksum_pos)) != static_cast<ssize_t>(n))
            io_fail("patch checksums in");
    }
    if (::fsync(fd) != 0) io_fail("fsync");
    FILE* fp = impl_->fp;
    impl_->fp = nullptr;
    if (std::fclose(fp) != 0) io_fail("close");
    if (std::rename(tmp_path_.c_str(), out_path_.c_str()) != 0)
        throw Error("gguf", "rename " + tmp_path_ + " to " + out_path_ + ": " + std::strerror(errno));
    impl_->state = State::Finished;
    unregister_temp_file(impl_->guard);
    impl_->guard = -1;
    // Make the rename itself durable.
    const std::filesystem::path parent = std::filesystem::path(out_path_).parent_path();
    const std::filesystem::path dir = parent.empty() ? std::filesystem::path(".") : parent;
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace ds3::gguf
