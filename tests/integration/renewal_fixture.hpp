// The renewal tests' fixture: a SoftHSM token, a test CA on loopback, a firmad to renew with.
#pragma once
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <map>
#include <memory>
#include <string>

#include "ca_service.hpp"
#include "client/firma.hpp"
#include "rig.hpp"

namespace firmad::test {

constexpr const char* kNpie = "A1234567890";

class Renewal : public ::testing::Test {
 protected:
  TokenRig rig;
  fs::path out = rig.dir() / "out";
  std::unique_ptr<CaService> ca;
  std::unique_ptr<Daemon> daemon;

  void SetUp() override { fs::create_directories(out); }

  void start_ca(bool tls = false) { ca = std::make_unique<CaService>(rig.ca(), rig.dir() / "ca" / "ca.key", tls); }

  // A [keys.<alias>.renewal] table for the provider, manual unless `extra` says otherwise.
  std::string table(const std::string& alias, const std::string& provider, const std::string& extra = "") const {
    std::string t = "\n[keys." + alias + ".renewal]\nprovider = \"" + provider + "\"\n" +
                    "trust_anchors = [\"" + rig.ca().string() + "\"]\n" +
                    "certificate_file = \"" + (out / (alias + ".pem")).string() + "\"\n" +
                    "chain_file = \"" + (out / (alias + "-chain.pem")).string() + "\"\n" +
                    (extra.find("retry_initial") == std::string::npos ? "retry_initial = \"1s\"\nretry_max = \"2s\"\n" : "");
    // Generous: the suite runs two tests at a time on two cores, and the CA
    // service issues with the openssl command.
    if (provider != "helper") t += "connect_timeout = \"5s\"\ntimeout = \"8s\"\n";
    if (extra.find("automatic") == std::string::npos) t += "automatic = false\n";
    if (provider == "idse") t += "url = \"" + ca->base_url() + "\"\n";
    if (provider == "est") t += "url = \"" + ca->base_url() + "/.well-known/est\"\n";
    if (provider == "helper")
      t += "command = [\"/bin/bash\", \"" + (source_dir() / "tests/support/certmonger-helper.sh").string() + "\", \"" +
           (rig.dir() / "ca").string() + "\"]\n" + (extra.find("helper_timeout") == std::string::npos ? "helper_timeout = \"10s\"\n" : "");
    return t + extra;
  }

  // Starts firmad with the renewal tables; crash_at arms $FIRMAD_TEST_CRASH_AT.
  void start(const std::string& tables, const std::string& crash_at = "", bool pin_from_admin = false,
             std::map<std::string, std::string> replace = {}) {
    daemon.reset();
    if (!crash_at.empty()) ::setenv("FIRMAD_TEST_CRASH_AT", crash_at.c_str(), 1);
    replace.emplace("uri = \"pkcs11:object=empresa;id=%01\"",
                    "uri = \"pkcs11:object=empresa;id=%01\"\nnpie = \"" + std::string(kNpie) + "\"");
    if (pin_from_admin) replace["pin_source ="] = "pin_source = \"admin\"", replace["pin_file ="] = "";
    daemon = std::make_unique<Daemon>(rig.write_config(replace, tables), rig.socket());
    ::unsetenv("FIRMAD_TEST_CRASH_AT");
    ASSERT_TRUE(daemon->wait_for_log(pin_from_admin ? "event=started " : "event=token-login ")) << daemon->log();
  }

  CommandResult ctl(const std::string& args, int timeout = 60) {
    return run(quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " " + args, timeout);
  }

  firma::Json key(const std::string& alias) {
    firma::Client c(rig.socket().string());
    for (auto& k : c.list_keys())
      if (k["alias"] == alias) return k;
    return nullptr;
  }
  std::string state(const std::string& alias) {
    auto k = key(alias);
    return k.contains("renewal") ? k["renewal"].value("state", "") : "";
  }
  std::string serial(const std::string& alias) {
    const auto k = key(alias);
    return k.is_object() && k.contains("certificate") ? k["certificate"].value("serial", "") : "";
  }

  // The public key of a PEM certificate file, as base64 DER, via openssl.
  std::string certificate_key(const fs::path& pem) {
    auto r = run("openssl x509 -in " + quote(pem.string()) + " -pubkey -noout | openssl pkey -pubin -outform DER | base64 -w0");
    return r.exit_code == 0 ? r.out : "";
  }

  // Signs with firmactl and verifies with the public key of `certificate` (PEM).
  bool signs_for(const std::string& alias, const fs::path& certificate) {
    write_file(out / "data.txt", "factura " + alias);
    auto r = ctl("sign " + alias + " " + quote((out / "data.txt").string()) + " -o " + quote((out / "data.sig").string()));
    if (r.exit_code != 0) {
      ADD_FAILURE() << r.out;
      return false;
    }
    r = run("openssl x509 -in " + quote(certificate.string()) + " -pubkey -noout > " + quote((out / "v.pub").string()) +
            " && openssl dgst -sha256 -verify " + quote((out / "v.pub").string()) + " -signature " +
            quote((out / "data.sig").string()) + " " + quote((out / "data.txt").string()));
    return r.exit_code == 0;
  }

  // The certificate the token holds for a key now, as a PEM file.
  fs::path token_certificate(const std::string& alias) {
    auto k = key(alias);
    const fs::path p = out / (alias + "-token.pem");
    // Read it back with pkcs11-tool by the id the daemon serves it under.
    const std::string uri = k.value("uri", "");
    const auto at = uri.find("id=");
    std::string id;
    for (std::size_t i = at + 3; at != std::string::npos && i < uri.size() && uri[i] != ';'; ++i)
      if (uri[i] != '%') id += uri[i];
    run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --read-object --type cert --id " + id + " -o " +
        quote((out / "t.der").string()) + " 2>/dev/null && openssl x509 -inform DER -in " + quote((out / "t.der").string()) +
        " -out " + quote(p.string()));
    return p;
  }

  long certificates_on_token() {
    auto r = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --list-objects --type cert 2>/dev/null | grep -c 'Certificate Object'");
    return std::stol(r.out.empty() ? "0" : r.out);
  }
};

}  // namespace firmad::test
