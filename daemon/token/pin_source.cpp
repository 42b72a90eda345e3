// PIN files and systemd credentials, checked before they are read.
#include "daemon/token/pin_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace firmad {
namespace {

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

protocol::Secret read_private_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY)};
  if (f.fd < 0) throw PinSourceError("cannot open PIN file " + path + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(f.fd, &st) != 0) throw PinSourceError("cannot stat PIN file " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw PinSourceError("PIN file " + path + " is not a regular file");
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw PinSourceError("PIN file " + path + " is accessible by group or others (mode " + mode +
                         "); run 'chmod 600 " + path + "'");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    throw PinSourceError("PIN file " + path + " is owned by another user (uid " + std::to_string(st.st_uid) + ")");
  char buf[protocol::Secret::kCapacity + 2];
  std::size_t len = 0;
  while (len < sizeof buf) {
    const ssize_t n = ::read(f.fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      protocol::secure_zero(buf, sizeof buf);
      throw PinSourceError("cannot read PIN file " + path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    len += static_cast<std::size_t>(n);
  }
  if (len > 0 && buf[len - 1] == '\n') --len;
  if (len > 0 && buf[len - 1] == '\r') --len;
  protocol::Secret pin;
  const bool too_long = len > protocol::Secret::kCapacity;
  if (!too_long) pin.assign(std::string_view(buf, len));
  protocol::secure_zero(buf, sizeof buf);
  if (too_long) throw PinSourceError("PIN file " + path + " is longer than a PIN may be");
  if (pin.empty()) throw PinSourceError("PIN file " + path + " is empty");
  return pin;
}

}  // namespace

std::string pin_source_name(const TokenConfig& token) {
  switch (token.pin_source) {
    case PinSource::File:
      return "PIN file " + token.pin_file;
    case PinSource::Credential:
      return "credential " + token.pin_credential;
    case PinSource::Admin:
      break;
  }
  return "administrator";
}

protocol::Secret read_pin(const TokenConfig& token) {
  switch (token.pin_source) {
    case PinSource::File:
      return read_private_file(token.pin_file);
    case PinSource::Credential: {
      const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
      if (!dir || !*dir)
        throw PinSourceError("pin_source is \"credential\" but $CREDENTIALS_DIRECTORY is not set (add LoadCredential=" +
                             token.pin_credential + ":... to the service)");
      return read_private_file(std::string(dir) + "/" + token.pin_credential);
    }
    case PinSource::Admin:
      break;
  }
  throw PinSourceError("token " + token.name + " takes its PIN from an administrator ('firmactl login " + token.name + "')");
}

}  // namespace firmad
