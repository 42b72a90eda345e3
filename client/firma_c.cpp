// libfirma's C interface over the C++ client.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

#include "client/firma.h"
#include "client/firma.hpp"

struct firma_client {
  std::optional<firma::Client> client;
  std::string error;
};

namespace {

template <typename Fn>
int guarded(firma_client* c, Fn&& fn) {
  if (!c) return -1;
  try {
    if (!c->client) throw firma::ConnectionError("not connected");
    fn(*c->client);
    c->error.clear();
    return 0;
  } catch (const std::exception& e) {
    c->error = e.what();
  } catch (...) {
    c->error = "unknown error";
  }
  return -1;
}

int hand_out(const firma::Bytes& bytes, uint8_t** out, size_t* len) {
  *out = static_cast<uint8_t*>(std::malloc(bytes.empty() ? 1 : bytes.size()));
  if (!*out) throw std::bad_alloc();
  std::memcpy(*out, bytes.data(), bytes.size());
  *len = bytes.size();
  return 0;
}

}  // namespace

extern "C" {

int firma_connect(const char* socket_path, firma_client** out) {
  if (!out) return -1;
  *out = new (std::nothrow) firma_client;
  if (!*out) return -1;
  try {
    (*out)->client.emplace(socket_path ? socket_path : firma::default_socket());
    return 0;
  } catch (const std::exception& e) {
    (*out)->error = e.what();
    return -1;
  }
}

void firma_close(firma_client* c) { delete c; }

const char* firma_last_error(const firma_client* c) { return c ? c->error.c_str() : "no client"; }

int firma_sign_data(firma_client* c, const char* key, const char* hash, const uint8_t* data, size_t len, uint8_t** sig,
                    size_t* sig_len) {
  return guarded(c, [&](firma::Client& cl) {
    firma::SignOptions o;
    if (hash) o.hash = hash;
    hand_out(cl.sign_data(key, {data, len}, o), sig, sig_len);
  });
}

int firma_sign_digest(firma_client* c, const char* key, const char* hash, const uint8_t* digest, size_t len,
                      uint8_t** sig, size_t* sig_len) {
  return guarded(c, [&](firma::Client& cl) {
    firma::SignOptions o;
    if (hash) o.hash = hash;
    hand_out(cl.sign_digest(key, {digest, len}, o), sig, sig_len);
  });
}

int firma_sign_cms(firma_client* c, const char* key, const uint8_t* content, size_t len, int detached, uint8_t** cms,
                   size_t* cms_len) {
  return guarded(c, [&](firma::Client& cl) {
    std::span<const uint8_t> data(content, len);
    hand_out(detached ? cl.sign_cms_detached(key, firma::digest("sha256", data)) : cl.sign_cms(key, data), cms, cms_len);
  });
}

int firma_status_json(firma_client* c, char** json) {
  return guarded(c, [&](firma::Client& cl) {
    const std::string text = cl.status().dump();
    *json = static_cast<char*>(std::malloc(text.size() + 1));
    if (!*json) throw std::bad_alloc();
    std::memcpy(*json, text.c_str(), text.size() + 1);
  });
}

void firma_free(void* p) { std::free(p); }

}  // extern "C"
