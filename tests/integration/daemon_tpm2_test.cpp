// A second real PKCS#11 implementation: tpm2-pkcs11 on a software TPM (swtpm),
// through a real firmad: signing, renewal with a key made in the TPM, import
// refused cleanly, and a TPM that crashes and comes back (issue 10).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "ca_service.hpp"
#include "client/firma.hpp"
#include "tpm2_fixture.hpp"

namespace firmad::test::tpm2 {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// The last `lines` lines of a log: a failing signature every 100 ms makes
// firmad's log long, and its start is the same in every test.
std::string tail(const std::string& log, int lines = 30) {
  std::size_t at = log.size();
  while (lines-- > 0 && at > 0) {
    const auto nl = log.rfind('\n', at - 1);
    if (nl == std::string::npos) return log;
    at = nl;
  }
  return "[...]" + log.substr(at);
}

// The suite is named after the rig it runs on (test::Tpm2Token).
class Tpm2Token : public ::testing::Test {
 protected:
  std::unique_ptr<test::Tpm2Token> tpm;
  std::unique_ptr<Daemon> daemon;
  fs::path out;

  void SetUp() override {
    // A missing package fails the test with its name: never a skip.
    ASSERT_TRUE(fs::exists(test::Tpm2Token::kModule)) << test::Tpm2Token::kModule << " is missing: install libtpm2-pkcs11-1";
  }
  // Makes the token (each test first); fails the test with the rig's output if it cannot.
  void make(test::Tpm2Token::Access access = test::Tpm2Token::Access::Direct) {
    try {
      tpm = std::make_unique<test::Tpm2Token>(access);
    } catch (const std::exception& e) {
      FAIL() << "the tpm2-pkcs11 token could not be made: " << e.what();
    }
    out = tpm->dir() / "out";
    fs::create_directories(out);
  }
  void TearDown() override {
    daemon.reset();  // before the TPM: firmad's module talks to it
    tpm.reset();
  }

  // firmad on the token, refreshing every 200 ms, changed by `replace` and
  // `extra` as Tpm2Token::write_config says; waits for its login.
  void start_firmad(std::map<std::string, std::string> replace = {}, const std::string& extra = "") {
    daemon.reset();
    replace.emplace("sessions =", "sessions = 2\nrefresh_interval_ms = 200");
    daemon = std::make_unique<Daemon>(tpm->write_config(replace, extra), tpm->socket());
    ASSERT_TRUE(daemon->wait_for_log("event=token-login ")) << daemon->log();
  }

  firma::Client client() {
    firma::Client c(tpm->socket().string());
    c.set_reply_timeout(std::chrono::seconds(20));
    return c;
  }
  firma::Json token_status() { return client().status()["tokens"][0]; }
  firma::Json key(const std::string& alias) {
    for (auto& k : client().list_keys())
      if (k["alias"] == alias) return k;
    return nullptr;
  }
  CommandResult ctl(const std::string& args, const std::string& stdin_text = "", int timeout = 60) {
    std::string cmd = quote(firmactl_binary().string()) + " --socket " + quote(tpm->socket().string()) + " " + args;
    if (!stdin_text.empty()) cmd = "printf '%s\\n' " + quote(stdin_text) + " | " + cmd;
    return run(cmd, timeout);
  }

  // A PEM public key (or certificate's key, with cert) as base64 DER, as ListKeys gives publicKey.
  std::string der_base64(const fs::path& pem, bool cert = false) {
    const std::string extract = cert ? "openssl x509 -in " + quote(pem.string()) + " -pubkey -noout | openssl pkey -pubin"
                                     : "openssl pkey -pubin -in " + quote(pem.string());
    const auto r = run(extract + " -outform DER | base64 -w0");
    return r.exit_code == 0 ? r.out : "";
  }

  // openssl dgst -sha256 -verify over `text` and `signature` with the public
  // key `pub` (PEM); for pss, RSA-PSS with the salt the length of the digest.
  bool verifies(const fs::path& pub, const std::string& text, const firma::Bytes& signature, bool pss = false) {
    static std::atomic<int> n{0};
    const std::string tag = std::to_string(n++);
    const fs::path data = out / ("v" + tag + ".txt"), sig = out / ("v" + tag + ".sig");
    write_file(data, text);
    write_file(sig, std::string(signature.begin(), signature.end()));
    const std::string opts = pss ? " -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32" : "";
    const auto r = run("openssl dgst -sha256" + opts + " -verify " + quote(pub.string()) + " -signature " + quote(sig.string()) +
                       " " + quote(data.string()));
    if (r.exit_code != 0) ADD_FAILURE() << "openssl dgst -verify failed: " << r.out;
    return r.exit_code == 0;
  }
  bool signs_and_verifies(const std::string& alias, const fs::path& pub, const std::string& text, bool pss = false) {
    firma::SignOptions o;
    o.pss = pss;
    const firma::Bytes data(text.begin(), text.end());
    return verifies(pub, text, client().sign_data(alias, data, o), pss);
  }
};

TEST_F(Tpm2Token, SignsRsaPkcs1RsaPssAndP256VerifiedAgainstTheTokensPublicKeys) {
  ASSERT_NO_FATAL_FAILURE(make());
  start_firmad();
  const auto t = token_status();
  EXPECT_TRUE(t["present"].get<bool>()) << t.dump();
  EXPECT_TRUE(t["loggedIn"].get<bool>()) << t.dump();
  EXPECT_EQ(t["loginState"], "logged-in");
  EXPECT_EQ(t["label"], "firmad-tpm");
  EXPECT_EQ(t["serial"], "0000000000000000") << "tpm2-pkcs11 gives every token this serial";
  EXPECT_EQ(t["loginAttempts"], 1);

  const auto rsa = key("empresa"), ec = key("firma-ec");
  ASSERT_TRUE(rsa.is_object() && ec.is_object());
  EXPECT_TRUE(rsa["found"].get<bool>()) << rsa.dump();
  EXPECT_EQ(rsa["type"], "rsa");
  EXPECT_EQ(rsa["bits"], 2048);
  EXPECT_EQ(rsa["schemes"], firma::Json::parse(R"(["rsa-pkcs1","rsa-pss"])")) << rsa.dump();
  EXPECT_EQ(ec["curve"], "P-256");
  EXPECT_EQ(ec["schemes"], firma::Json::parse(R"(["ecdsa"])")) << ec.dump();
  // The keys firmad serves are the ones the token reported when they were
  // made, and their certificates are the ones stored next to them.
  EXPECT_EQ(rsa["publicKey"], der_base64(tpm->public_key_pem("empresa")));
  EXPECT_EQ(ec["publicKey"], der_base64(tpm->public_key_pem("firma-ec")));
  for (const char* alias : {"empresa", "firma-ec"}) {
    const auto serial = run("openssl x509 -in " + quote(tpm->certificate_pem(alias).string()) + " -noout -serial | cut -d= -f2 | tr -d '\\n'");
    EXPECT_EQ(key(alias)["certificate"]["serial"], serial.out) << alias;
  }

  EXPECT_TRUE(signs_and_verifies("empresa", tpm->public_key_pem("empresa"), "PKCS#1 v1.5 en el TPM"));
  EXPECT_TRUE(signs_and_verifies("empresa", tpm->public_key_pem("empresa"), "RSA-PSS en el TPM", true));
  EXPECT_TRUE(signs_and_verifies("firma-ec", tpm->public_key_pem("firma-ec"), "ECDSA P-256 en el TPM"));
  // The TPM makes RSA-PSS only with a salt as long as the digest: another
  // salt is a scheme it does not support, not a token error.
  try {
    firma::SignOptions pss;
    pss.pss = true, pss.salt_length = 20;
    client().sign_digest("empresa", firma::Bytes(32, 1), pss);
    ADD_FAILURE() << "the TPM signed RSA-PSS with a 20-byte salt";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.MechanismNotSupported") << e.parameters();
    EXPECT_EQ(e.parameters()["scheme"], "rsa-pss");
  }
  // CMS over the same key: what IDSE's login needs.
  {
    const std::string text = "cms en el TPM";
    const auto cms = client().sign_cms("empresa", firma::Bytes(text.begin(), text.end()));
    write_file(out / "c.der", std::string(cms.begin(), cms.end()));
    const auto r = run("openssl cms -verify -inform DER -in " + quote((out / "c.der").string()) + " -CAfile " +
                       quote(tpm->ca().string()) + " -purpose any");
    EXPECT_EQ(r.exit_code, 0) << r.out;
    EXPECT_NE(r.out.find(text), std::string::npos) << r.out;
  }

  // Four clients at once over the two sessions, both keys.
  constexpr int kThreads = 4, kEach = 5;
  std::vector<std::vector<std::pair<std::string, firma::Bytes>>> made(kThreads);
  std::atomic<int> failures{0};
  const auto t0 = Clock::now();
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i)
      threads.emplace_back([&, i] {
        try {
          auto c = client();
          for (int j = 0; j < kEach; ++j) {
            const std::string alias = (i + j) % 2 ? "empresa" : "firma-ec";
            const std::string text = "hilo " + std::to_string(i) + " firma " + std::to_string(j);
            made[i].emplace_back(alias + "\n" + text, c.sign_data(alias, firma::Bytes(text.begin(), text.end())));
          }
        } catch (const std::exception& e) {
          ++failures;
          std::fprintf(stderr, "concurrent signer %d: %s\n", i, e.what());
        }
      });
    for (auto& th : threads) th.join();
  }
  const double concurrent_ms = ms_since(t0);
  EXPECT_EQ(failures, 0) << daemon->log();
  for (const auto& per_thread : made)
    for (const auto& [what, sig] : per_thread) {
      const auto nl = what.find('\n');
      EXPECT_TRUE(verifies(tpm->public_key_pem(what.substr(0, nl)), what.substr(nl + 1), sig)) << what;
    }
  std::printf("[ figures  ] %d signatures from %d concurrent clients (RSA-2048 and P-256, 2 sessions) in %.0f ms\n",
              kThreads * kEach, kThreads, concurrent_ms);
}

// Through a resource manager, as on a real machine: straight to swtpm, its
// three transient object slots are too few for the keys firmad has loaded
// plus a new one ("out of memory for object contexts"), and a restarted
// firmad finds the TPM still full of what the first left loaded.
TEST_F(Tpm2Token, RenewalMakesTheNewKeyInTheTpmAndInstallsItsCertificate) {
  ASSERT_NO_FATAL_FAILURE(make(test::Tpm2Token::Access::ResourceManager));
  CaService ca(tpm->ca(), tpm->ca_key(), true);
  auto table = [&](const std::string& alias, const std::string& provider, const std::string& url) {
    return "\n[keys." + alias + ".renewal]\nprovider = \"" + provider + "\"\nkey = \"new\"\nurl = \"" + url + "\"\n" +
           "trust_anchors = [\"" + tpm->ca().string() + "\"]\n" + "certificate_file = \"" + (out / (alias + ".pem")).string() +
           "\"\nchain_file = \"" + (out / (alias + "-chain.pem")).string() + "\"\n" +
           "retry_initial = \"60s\"\nretry_max = \"120s\"\nconnect_timeout = \"5s\"\ntimeout = \"20s\"\nautomatic = false\n";
  };
  const std::string tables = table("empresa", "idse", ca.base_url()) + table("firma-ec", "est", ca.base_url() + "/.well-known/est");
  const std::map<std::string, std::string> npie{
      {"uri = \"pkcs11:object=empresa;", "uri = \"pkcs11:object=empresa;id=%30%31\"\nnpie = \"A1234567890\""}};
  start_firmad(npie, tables);
  const long certs_before = tpm->certificates_on_token();

  // IDSE over HTTPS for the RSA key; EST for the EC key, whose TLS client
  // authentication is made by the key in the TPM.
  std::map<std::string, firma::Json> renewed;
  for (const std::string alias : {"empresa", "firma-ec"}) {
    SCOPED_TRACE(alias);
    const auto before = key(alias);
    const auto t0 = Clock::now();
    const auto r = ctl("renew " + alias);
    const double renew_ms = ms_since(t0);
    if (r.exit_code != 0) {
      // The other key is still tried: each says what fails for its kind.
      ADD_FAILURE() << "renew " << alias << " exited " << r.exit_code << ":\n" << r.out << tail(daemon->log()) << ca.log();
      continue;
    }
    for (const char* step : {"key-pending", "key-ready", "request-built", "submitted", "issued", "verified", "installed", "retired"})
      EXPECT_NE(r.out.find(std::string("  ") + step + ": "), std::string::npos) << step << "\n" << r.out;
    const auto after = key(alias);
    EXPECT_EQ(after["renewal"]["state"], "retired");
    EXPECT_NE(after["publicKey"], before["publicKey"]) << "key = \"new\": a new key pair in the TPM";
    EXPECT_EQ(after["type"], before["type"]);
    EXPECT_EQ(after["bits"], before["bits"]);
    EXPECT_NE(after["certificate"]["serial"], before["certificate"]["serial"]);
    // The certificate file, the token's certificate and the token's key agree, and signatures verify with it.
    const fs::path pem = out / (alias + ".pem");
    EXPECT_EQ(der_base64(pem, true), after["publicKey"].get<std::string>());
    EXPECT_EQ(run("openssl verify -CAfile " + quote(tpm->ca().string()) + " " + quote(pem.string())).exit_code, 0);
    const auto serial = run("openssl x509 -in " + quote(pem.string()) + " -noout -serial | cut -d= -f2 | tr -d '\\n'");
    EXPECT_EQ(after["certificate"]["serial"], serial.out) << "the certificate on the token is the one written to the file";
    run("openssl x509 -in " + quote(pem.string()) + " -pubkey -noout > " + quote((out / (alias + ".new.pub")).string()));
    EXPECT_TRUE(signs_and_verifies(alias, out / (alias + ".new.pub"), "firmado con la llave nueva " + alias));
    renewed[alias] = after;
    std::printf("[ figures  ] renewal of %s (%s, key made in the TPM) took %.0f ms\n", alias.c_str(),
                alias == "empresa" ? "RSA-2048, idse over HTTPS" : "P-256, EST over TLS", renew_ms);
  }
  EXPECT_EQ(renewed.size(), 2u);
  // tpm2-pkcs11 signs RSA PKCS#1 v1.5 with the TPM's RSA decryption: the new
  // RSA key may decrypt there, and firmad says so.
  EXPECT_TRUE(daemon->wait_for_log("event=renewal-key-may-decrypt")) << daemon->log();
  EXPECT_EQ(tpm->certificates_on_token(), certs_before) << "the old certificates were retired from the token";
  const std::string requests = ca.requests();
  EXPECT_NE(requests.find("POST /.well-known/est/simplereenroll 200"), std::string::npos) << requests;
  EXPECT_EQ(requests.find("simplereenroll 401"), std::string::npos) << "the TPM key authenticated the TLS client: " << requests;

  // After a restart firmad serves the new keys from the TPM.
  start_firmad(npie, tables);
  for (const auto& [alias, after] : renewed) {
    EXPECT_EQ(key(alias)["publicKey"], after["publicKey"]) << alias;
    EXPECT_TRUE(signs_and_verifies(alias, out / (alias + ".new.pub"), "tras reiniciar " + alias)) << alias;
  }
}

TEST_F(Tpm2Token, ImportIsRefusedWithANamedErrorAndLeavesNothing) {
  ASSERT_NO_FATAL_FAILURE(make());
  start_firmad();
  // An RSA .pfx and a SAT-style P-256 .key/.cer, issued by the token's test CA.
  const auto made = run("cd " + quote(out.string()) + " && "
                        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out r.pem 2>/dev/null && "
                        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out e.pem 2>/dev/null && "
                        "for k in r e; do openssl req -new -key $k.pem -subj \"/O=PATRON DEMO/CN=PATRON $k\" -out $k.csr && "
                        "openssl x509 -req -in $k.csr -CA " + quote(tpm->ca().string()) + " -CAkey " + quote(tpm->ca_key().string()) +
                        " -CAcreateserial -days 30 -out $k.crt 2>/dev/null || exit 1; done && "
                        "openssl pkcs12 -export -inkey r.pem -in r.crt -passout pass:s3creto -out r.pfx && "
                        "openssl pkcs8 -topk8 -v2 des3 -in e.pem -outform DER -passout pass:s3creto -out e.key && "
                        "openssl x509 -in e.crt -outform DER -out e.cer");
  ASSERT_EQ(made.exit_code, 0) << made.out;

  auto listing = [&] {
    std::set<std::string> keys;
    for (const auto& k : client().list_keys())
      keys.insert(k["alias"].get<std::string>() + " " + k.value("publicKey", "") + " " +
                  (k.contains("certificate") ? k["certificate"]["serial"].get<std::string>() : ""));
    return keys;
  };
  const auto keys_before = listing();
  const std::string objects_before = tpm->objects();
  ASSERT_NE(objects_before, "") << "tpm2_ptool listobjects failed";

  // Refused up front: the import's rehearsal (its private key as a session
  // object) is what tpm2-pkcs11 refuses, before anything is written.
  const std::pair<const char*, std::string> cases[] = {
      {"pfx", "--pfx " + quote((out / "r.pfx").string())},
      {"key+cer", "--key " + quote((out / "e.key").string()) + " --cert " + quote((out / "e.cer").string())}};
  for (const auto& [what, args] : cases) {
    SCOPED_TRACE(what);
    const auto t0 = Clock::now();
    const auto r = ctl("--json import nuevo --token tpm " + args + " --password-stdin", "s3creto");
    const double refuse_ms = ms_since(t0);
    EXPECT_EQ(r.exit_code, 1) << r.out;
    firma::Json reply;
    for (std::size_t at = 0; at < r.out.size();) {
      const auto nl = r.out.find('\n', at);
      const std::string line = r.out.substr(at, nl == std::string::npos ? std::string::npos : nl - at);
      if (!line.empty() && line[0] == '{') reply = firma::Json::parse(line, nullptr, false);
      at = nl == std::string::npos ? r.out.size() : nl + 1;
    }
    ASSERT_TRUE(reply.is_object() && reply.contains("error")) << r.out;
    const std::string name = reply["error"];
    const std::string detail = reply["parameters"].dump();
    EXPECT_EQ(name, "io.firmad.Signer.ImportFailed") << detail;
    EXPECT_EQ(reply["parameters"].value("reason", ""), "unsupported") << detail;
    EXPECT_NE(reply["parameters"].value("detail", "").find("takes no imported private keys"), std::string::npos) << detail;
    EXPECT_EQ(r.out.find("s3creto"), std::string::npos) << "no password in messages";
    std::printf("[ figures  ] import (%s) refused in %.0f ms: %s %s\n", what, refuse_ms, name.c_str(), detail.c_str());
  }

  EXPECT_EQ(listing(), keys_before) << "the keys listed are the same as before";
  EXPECT_EQ(tpm->objects(), objects_before) << "nothing was left in the token's store";
  EXPECT_EQ(read_file(tpm->dir() / "state" / "state.json").find("nuevo"), std::string::npos) << "no record of the refused key";
  EXPECT_EQ(daemon->log().find("s3creto"), std::string::npos) << "no password in the log";
  EXPECT_TRUE(signs_and_verifies("empresa", tpm->public_key_pem("empresa"), "sigue firmando"));
  EXPECT_TRUE(signs_and_verifies("firma-ec", tpm->public_key_pem("firma-ec"), "sigue firmando"));
}

TEST_F(Tpm2Token, TpmKilledAndRestartedIsServedAgainWithoutARestartOfFirmad) {
  ASSERT_NO_FATAL_FAILURE(make());
  start_firmad();
  ASSERT_TRUE(signs_and_verifies("firma-ec", tpm->public_key_pem("firma-ec"), "antes"));
  const pid_t firmad_pid = daemon->pid();

  tpm->stop_tpm();
  // Signatures fail, fast and named: never a hang, never a wrong signature.
  std::vector<double> fail_ms;
  std::set<std::string> names;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    try {
      client().sign_data("firma-ec", firma::Bytes{1, 2, 3});
      names.insert("(signed)");
    } catch (const firma::Error& e) {
      names.insert(e.name() + " " + e.parameters().dump());
    }
    fail_ms.push_back(ms_since(t0));
  }
  for (const auto& n : names)
    EXPECT_TRUE(n.rfind("io.firmad.Signer.TokenError ", 0) == 0 || n.rfind("io.firmad.Signer.TokenAbsent ", 0) == 0) << n;
  EXPECT_LT(*std::max_element(fail_ms.begin(), fail_ms.end()), 2000.0);
  // Status says the token is gone or in error (refresh every 200 ms).
  const bool noticed = eventually(
      [&] {
        const auto t = token_status();
        return !t["present"].get<bool>() || t["loginState"] == "absent" || t["loginState"] == "error";
      },
      std::chrono::seconds(5));
  EXPECT_TRUE(noticed) << "status while the TPM is gone: " << token_status().dump() << "\n" << tail(daemon->log());

  // Back on the same port and state: served again, no restart of firmad.
  tpm->start_tpm();
  const auto t1 = Clock::now();
  bool served = false;
  std::string last;
  const std::string text = "despues";
  while (!served && ms_since(t1) < 20000) {
    try {
      const auto sig = client().sign_data("firma-ec", firma::Bytes(text.begin(), text.end()));
      served = true;
      EXPECT_TRUE(verifies(tpm->public_key_pem("firma-ec"), text, sig));
    } catch (const firma::Error& e) {
      last = e.name() + " " + e.parameters().dump();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  const double recovery_ms = ms_since(t1);
  EXPECT_TRUE(served) << "no signature within 20 s of the TPM's return; the last error: " << last << "\nstatus: "
                      << token_status().dump() << "\n" << tail(daemon->log());
  EXPECT_TRUE(daemon->running());
  EXPECT_EQ(daemon->pid(), firmad_pid);
  EXPECT_EQ(daemon->log().find("event=token-replaced"), std::string::npos) << tail(daemon->log());
  if (served) {
    EXPECT_TRUE(signs_and_verifies("empresa", tpm->public_key_pem("empresa"), "despues RSA"));
    EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
  }
  // Control: the TPM itself is back, so a firmad that never served
  // anything from the module (whose module is initialised afresh) signs.
  std::string control = "not needed";
  if (!served) {
    daemon.reset();
    const std::string flushed = tpm->flush();
    EXPECT_EQ(flushed, "");
    ASSERT_NO_FATAL_FAILURE(start_firmad());
    const bool fresh_signs = signs_and_verifies("firma-ec", tpm->public_key_pem("firma-ec"), "firmad nuevo");
    EXPECT_TRUE(fresh_signs) << "the TPM did not come back: the rig, not firmad, is at fault\n" << tail(daemon->log());
    control = fresh_signs ? "a newly started firmad signs" : "a newly started firmad does not sign either";
  }
  std::printf("[ figures  ] TPM killed: failures in %.1f..%.1f ms (%s); status noticed: %s; signing again %s %.0f ms after "
              "swtpm listened again (refresh interval 200 ms); control: %s\n",
              *std::min_element(fail_ms.begin(), fail_ms.end()), *std::max_element(fail_ms.begin(), fail_ms.end()),
              names.begin()->c_str(), noticed ? "yes" : "no", served ? "after" : "NOT within", recovery_ms, control.c_str());
}

}  // namespace
}  // namespace firmad::test::tpm2
