// A local renewal CA (tests/support/renewal_ca.py) run as a child process for one test.
#pragma once
#include <sys/types.h>

#include <filesystem>
#include <string>

#include "rig.hpp"

namespace firmad::test {

// Serves the IDSE-style and EST endpoints on 127.0.0.1, issuing from the given
// test CA; misbehaves as the words written with control() say (see the top of
// renewal_ca.py). With tls, HTTPS with a certificate for IP 127.0.0.1 issued
// by that CA; client certificates are requested but optional.
class CaService {
 public:
  // Starts the service and waits (at most 10 s) until it listens; throws
  // std::runtime_error with the service's log if it does not.
  CaService(fs::path ca_cert, fs::path ca_key, bool tls);
  CaService(const CaService&) = delete;  // owns a process
  CaService& operator=(const CaService&) = delete;
  ~CaService();

  // "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT".
  std::string base_url() const;
  int port() const { return port_; }
  // Replaces the control file (atomically); "" restores normal behaviour.
  void control(const std::string& words) const;
  // requests.log: one "METHOD PATH STATUS" line per request so far.
  std::string requests() const;
  // The service's stderr (service.log).
  std::string log() const;
  fs::path dir() const { return dir_.path(); }
  fs::path ca_cert() const { return ca_cert_; }
  fs::path ca_key() const { return ca_key_; }
  bool tls() const { return tls_; }

 private:
  fs::path ca_cert_, ca_key_;
  bool tls_;
  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace firmad::test
