// Existing IMSS/SAT credentials onto the token, and the certificate's life: import,
// identity in status, expiry, in-person request deadline, cancellation.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "daemon_fixture.hpp"
#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "protocol/base64.hpp"

namespace firmad::test {
namespace {

class Credentials : public ::testing::Test {
 protected:
  TokenRig rig;
  std::unique_ptr<Daemon> daemon;
  fs::path work = rig.dir() / "files";

  // firmad runs as a uid of its own (kDaemonUid), as under the shipped unit;
  // the administrator is root, a client of another uid.
  void SetUp() override {
    fs::create_directories(work);
    rig.hand_to(kDaemonUid);
    start();
  }
  void start(const std::string& extra = "") {
    daemon.reset();
    Daemon::Options options;
    options.user = kDaemonUid;
    daemon = std::make_unique<Daemon>(rig.write_config({}, extra), rig.socket(), options);
    ASSERT_TRUE(daemon->wait_for_log("event=token-login ")) << daemon->log();
  }
  firma::Client client() { return firma::Client(rig.socket().string()); }
  CommandResult ctl(const std::string& args, const std::string& stdin_text = "") {
    std::string cmd = quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " " + args;
    if (!stdin_text.empty()) cmd = "printf '%s\\n' " + quote(stdin_text) + " | " + cmd;
    return run(cmd);
  }
  std::string f(const std::string& name) const { return quote((work / name).string()); }
  std::string ca_args() const {
    return " -CA " + quote(rig.ca().string()) + " -CAkey " + quote((rig.dir() / "ca" / "ca.key").string());
  }
  // A key and a certificate from the test CA, as SAT issues them.
  void make_credential(const std::string& name, const std::string& algorithm = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
                       const std::string& subject = "/C=MX/O=PATRON DEMO/x500UniqueIdentifier=AAA010101AAA \\/ HEGT7610034S2/serialNumber= \\/ HEGT761003MDFRNN09/CN=PATRON DEMO SA DE CV",
                       const std::string& serial = "0x3030303031303030303030353034343635303238") {
    auto r = run("cd " + quote(work.string()) + " && openssl genpkey " + algorithm + " -out " + name + ".pem && openssl req -new -key " + name +
                 ".pem -subj " + quote(subject) + " -out " + name + ".csr && openssl x509 -req -in " + name + ".csr" + ca_args() +
                 " -set_serial " + serial + " -days 30 -out " + name + ".crt.pem && openssl x509 -in " + name +
                 ".crt.pem -outform DER -out " + name + ".cer");
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  long objects_on_token() {
    auto r = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin + " --list-objects 2>/dev/null | grep -c 'Object;'");
    return std::stol(r.out);
  }
  bool verifies(const std::string& cert, const std::string& sig, const std::string& data) {
    auto r = run("openssl x509 -in " + f(cert) + " -pubkey -noout > " + f("v.pub") + " && openssl dgst -sha256 -verify " + f("v.pub") +
                 " -signature " + f(sig) + " " + f(data));
    return r.exit_code == 0;
  }
  void sign_to(const std::string& key, const std::string& data, const std::string& sig) {
    auto r = ctl("sign " + key + " " + f(data) + " -o " + f(sig));
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
};

TEST_F(Credentials, ImportsModernAndLegacyPfxAndSignsWithThem) {
  make_credential("patron");
  write_file(work / "doc.txt", "alta patronal");
  for (const std::string legacy : {"", "-legacy"}) {
    const std::string name = legacy.empty() ? "moderno" : "legado";
    auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export " + legacy + " -inkey patron.pem -in patron.crt.pem -passout pass:s3creto -out " + name + ".pfx");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = ctl("import " + name + " --token demo --pfx " + f(name + ".pfx") + " --password-stdin --allow-user 0 --npie 12345678901 --role additional", "s3creto");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_NE(r.out.find("imported " + name), std::string::npos) << r.out;
    sign_to(name, "doc.txt", name + ".sig");
    EXPECT_TRUE(verifies("patron.crt.pem", name + ".sig", "doc.txt"));
    EXPECT_TRUE(fs::exists(work / (name + ".pfx"))) << "the source stays unless --shred-source is given";
  }
  auto keys = client().list_keys();
  bool seen = false;
  for (const auto& k : keys) {
    if (k["alias"] != "legado") continue;
    seen = true;
    EXPECT_TRUE(k["imported"].get<bool>());
    EXPECT_EQ(k["role"], "additional");
    EXPECT_EQ(k["npie"], "12345678901");
  }
  EXPECT_TRUE(seen);
  // Recorded in the state directory: still served after a restart.
  start();
  sign_to("legado", "doc.txt", "again.sig");
  EXPECT_TRUE(verifies("patron.crt.pem", "again.sig", "doc.txt"));
}

TEST_F(Credentials, ImportsSatStyleKeyAndCerAndMakesCms) {
  make_credential("sat", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
  auto r = run("cd " + quote(work.string()) + " && openssl pkcs8 -topk8 -v2 des3 -in sat.pem -outform DER -passout pass:clave -out sat.key");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  write_file(work / "pw", "clave\n");
  r = ctl("import firma-sat --token demo --key " + f("sat.key") + " --cert " + f("sat.cer") + " --password-file " + f("pw") +
          " --allow-user 0 --shred-source");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_FALSE(fs::exists(work / "sat.key")) << "--shred-source removes the key file";
  EXPECT_FALSE(fs::exists(work / "sat.cer"));
  write_file(work / "cms.txt", "acuse");
  r = ctl("sign firma-sat --cms " + f("cms.txt") + " -o " + f("cms.p7s"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl cms -verify -binary -inform DER -in " + f("cms.p7s") + " -CAfile " + quote(rig.ca().string()) + " -out /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

TEST_F(Credentials, ImportedPrivateKeyCannotBeReadBack) {
  make_credential("secreto");
  auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export -inkey secreto.pem -in secreto.crt.pem -passout pass:x -out s.pfx");
  ASSERT_EQ(r.exit_code, 0);
  ASSERT_EQ(ctl("import secreto --token demo --pfx " + f("s.pfx") + " --password-stdin", "x").exit_code, 0);
  // Ask PKCS#11 itself, as any program on the machine could, for the key's value.
  auto module = pkcs11::Module::shared(TokenRig::kModule);
  pkcs11::Session session(module, module->slots_with_token().front());
  session.login(TokenRig::kPin);
  const auto found = session.find(CKO_PRIVATE_KEY, std::string("secreto"), std::nullopt);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_FALSE(session.attribute(found[0], CKA_PRIVATE_EXPONENT)) << "the private exponent must not be readable";
  EXPECT_FALSE(session.attribute(found[0], CKA_PRIME_1));
  EXPECT_EQ(session.attribute(found[0], CKA_SENSITIVE), pkcs11::Bytes{CK_TRUE});
  EXPECT_EQ(session.attribute(found[0], CKA_EXTRACTABLE), pkcs11::Bytes{CK_FALSE});
  EXPECT_TRUE(session.attribute(found[0], CKA_MODULUS)) << "public parts stay readable";
  EXPECT_EQ(session.attribute(found[0], CKA_DECRYPT), pkcs11::Bytes{CK_FALSE}) << "a signing key, nothing else";
  EXPECT_EQ(session.attribute(found[0], CKA_UNWRAP), pkcs11::Bytes{CK_FALSE});
  session.logout();
}

TEST_F(Credentials, BadFilesAreRefusedAndLeaveNothingOnTheToken) {
  make_credential("uno");
  make_credential("dos", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048", "/CN=OTRO", "7");
  auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export -inkey uno.pem -in uno.crt.pem -passout pass:bien -out uno.pfx && "
               "openssl pkcs8 -topk8 -v2 des3 -in uno.pem -outform DER -passout pass:bien -out uno.key && "
               "head -c 700 uno.pfx > cortado.pfx && head -c 3000 /dev/urandom > ruido.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const long before = objects_on_token();
  struct Case {
    std::string args, password, expect;
  };
  const Case cases[] = {
      {"--pfx " + f("uno.pfx"), "mal", "wrong password"},
      {"--key " + f("uno.key") + " --cert " + f("uno.cer"), "mal", "wrong password"},
      {"--key " + f("uno.key") + " --cert " + f("dos.cer"), "bien", "does not belong to this key"},
      {"--pfx " + f("cortado.pfx"), "bien", "damaged"},
      {"--pfx " + f("ruido.pfx"), "bien", "damaged"},
  };
  for (const auto& c : cases) {
    r = ctl("import malo --token demo " + c.args + " --password-stdin", c.password);
    EXPECT_EQ(r.exit_code, 1) << c.args << ": " << r.out;
    EXPECT_NE(r.out.find("nothing was imported"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << ": " << r.out;
    EXPECT_EQ(r.out.find(c.password == "mal" ? "mal\n" : "bien\n"), std::string::npos) << "no password in messages";
  }
  EXPECT_EQ(objects_on_token(), before);
  EXPECT_EQ(ctl("import empresa --token demo --pfx " + f("uno.pfx") + " --password-stdin", "bien").exit_code, 1)
      << "an existing name is refused";
  EXPECT_EQ(objects_on_token(), before);
  EXPECT_EQ(daemon->log().find("bien"), std::string::npos) << "no password in the log";
}

// Two administrators import under one name at the same moment: the second
// asks while the first is inside the token (a slow token, from the fault
// module). Exactly one import succeeds, the other is told KeyExists at once,
// and the token, the key list and state.json hold the one credential.
TEST_F(Credentials, ConcurrentImportsOfOneNameLeaveExactlyOne) {
  make_credential("uno");
  make_credential("dos", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256", "/CN=OTRO", "7");
  auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export -inkey uno.pem -in uno.crt.pem -passout pass:x -out uno.pfx && "
               "openssl pkcs12 -export -inkey dos.pem -in dos.crt.pem -passout pass:x -out dos.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const fs::path control = rig.dir() / "fault";
  write_file(control, "slow_create_ms=1500");
  ASSERT_EQ(::chown(control.c_str(), kDaemonUid, kDaemonUid), 0) << "firmad, as its own uid, reads the fault module's control file";
  ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  daemon.reset();
  Daemon::Options options;
  options.user = kDaemonUid;
  daemon = std::make_unique<Daemon>(rig.write_config({{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""}}),
                                    rig.socket(), options);
  ::unsetenv("FIRMAD_FAULT_CONTROL");
  ASSERT_TRUE(daemon->wait_for_log("event=token-login ")) << daemon->log();
  const long before = objects_on_token();
  auto import = [&](const std::string& pfx) {
    return "printf 'x\\n' | " + quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) +
           " import doble --token demo --pfx " + f(pfx) + " --password-stdin";
  };
  // The first, in the background; the second once the first is inside the token.
  r = run("(" + import("uno.pfx") + " > " + f("a.out") + " 2>&1; echo $? >> " + f("a.out") + ") & "
          "for i in $(seq 100); do [ -s " + quote(control.string() + ".in_create") + " ] && break; sleep 0.05; done; " +
          "[ -s " + quote(control.string() + ".in_create") + " ] || { echo 'the first import never reached the token'; exit 3; }; " +
          import("dos.pfx") + " > " + f("b.out") + " 2>&1; echo $? >> " + f("b.out") + "; wait");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string a = read_file(work / "a.out"), b = read_file(work / "b.out");
  EXPECT_NE(a.find("imported doble"), std::string::npos) << a;
  EXPECT_NE(b.find("already exists"), std::string::npos) << "the second is told the name exists (KeyExists): " << b;
  EXPECT_EQ(b.substr(b.size() - 2), "1\n") << b;
  const auto keys = client().list_keys();
  EXPECT_EQ(std::count_if(keys.begin(), keys.end(), [](const firma::Json& k) { return k["alias"] == "doble"; }), 1)
      << "keys lists the name once";
  for (const auto& k : keys)
    if (k["alias"] == "doble") {
      EXPECT_EQ(k["certificate"]["subject"].get<std::string>().find("OTRO"), std::string::npos) << "the first import's credential";
    }
  const auto state = firma::Json::parse(read_file(rig.dir() / "state" / "state.json"));
  EXPECT_TRUE(state["keys"].contains("doble")) << state.dump();
  EXPECT_EQ(objects_on_token(), before + 3) << "the second import wrote nothing (3 objects per credential)";
  // After a restart, the same: what state.json recorded is what is served.
  start();
  const auto again = client().list_keys();
  EXPECT_EQ(std::count_if(again.begin(), again.end(), [](const firma::Json& k) { return k["alias"] == "doble"; }), 1);
}

TEST_F(Credentials, StatusShowsHolderRfcCurpAndSerialForms) {
  make_credential("sat2");
  auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export -inkey sat2.pem -in sat2.crt.pem -passout pass:p -out sat2.pfx");
  ASSERT_EQ(r.exit_code, 0);
  ASSERT_EQ(ctl("import sat2 --token demo --pfx " + f("sat2.pfx") + " --password-stdin --npie 99887766554 --registro-patronal Y1234567890", "p").exit_code, 0);
  for (const auto& k : client().list_keys()) {
    if (k["alias"] != "sat2") continue;
    const auto& c = k["certificate"];
    EXPECT_EQ(c["holderName"], "PATRON DEMO SA DE CV");
    EXPECT_EQ(c["rfc"], "AAA010101AAA");
    EXPECT_EQ(c["rfcRepresentative"], "HEGT7610034S2");
    EXPECT_EQ(c["curpRepresentative"], "HEGT761003MDFRNN09");
    EXPECT_EQ(c["serialText"], "00001000000504465028");
    EXPECT_EQ(c["serial"], "3030303031303030303030353034343635303238");
    EXPECT_EQ(c["issuer"], "firmad Test CA");
    EXPECT_EQ(c["renewalState"], "none");
    EXPECT_EQ(k["registroPatronal"], "Y1234567890");
  }
  r = ctl("status");
  EXPECT_NE(r.out.find("RFC AAA010101AAA / HEGT7610034S2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("00001000000504465028"), std::string::npos) << r.out;
}

TEST_F(Credentials, ExpiredCertificateDoesNotSign) {
  // A certificate whose validity ended yesterday, from the test CA.
  auto r = run("cd " + quote(work.string()) + " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out old.pem && "
               "openssl req -new -key old.pem -subj /CN=VENCIDO -out old.csr && "
               "printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=idx\\nnew_certs_dir=.\\nserial=ser\\ndefault_md=sha256\\npolicy=p\\n[p]\\ncommonName=supplied\\n' > ca.cnf && "
               "touch idx && echo 01 > ser && openssl ca -batch -config ca.cnf -cert " + quote(rig.ca().string()) + " -keyfile " +
               quote((rig.dir() / "ca" / "ca.key").string()) + " -in old.csr -out old.crt.pem -startdate 20240101000000Z -enddate 20240301000000Z && "
               "openssl pkcs12 -export -inkey old.pem -in old.crt.pem -passout pass:v -out old.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  ASSERT_EQ(ctl("import vencido --token demo --pfx " + f("old.pfx") + " --password-stdin --allow-user 0", "v").exit_code, 0);
  write_file(work / "d.txt", "x");
  r = ctl("sign vencido " + f("d.txt") + " -o " + f("d.sig"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("expired on 2024-03-01T00:00:00Z"), std::string::npos) << r.out;
  try {
    client().sign_digest("vencido", firma::Bytes(32, 1));
    FAIL();
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.CertificateExpired");
    EXPECT_EQ(e.parameters()["notAfter"], "2024-03-01T00:00:00Z");
  }
}

TEST_F(Credentials, RequestDeadlineCountsBusinessDays) {
  auto r = ctl("request empresa --submitted 2024-09-25");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("by 2024-10-10"), std::string::npos) << "1 October 2024 is a holiday: " << r.out;
  EXPECT_NE(r.out.find("cancelled"), std::string::npos) << "the deadline has passed: " << r.out;
  r = ctl("--json request firma-ec");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto req = firma::Json::parse(r.out)["request"];
  EXPECT_EQ(req["state"], "pending");
  EXPECT_EQ(req["businessDaysLeft"], 10);
  // Tracked requests survive a restart; an extra non-working day moves the deadline.
  start("\n[calendar]\nextra_non_working_days = [\"2024-10-02\"]\n");
  for (const auto& k : client().list_keys())
    if (k["alias"] == "empresa") {
      EXPECT_EQ(k["request"]["deadline"], "2024-10-11");
    }
  EXPECT_EQ(ctl("request empresa --submitted 2024-02-30").exit_code, 1);
  EXPECT_EQ(ctl("request empresa --clear").exit_code, 0);
  for (const auto& k : client().list_keys())
    if (k["alias"] == "empresa") {
      EXPECT_FALSE(k.contains("request"));
    }
}

TEST_F(Credentials, CancelStopsSigningAtOnceAndDestroysTheObjects) {
  std::atomic<bool> go{true};
  std::atomic<int> ok{0}, cancelled{0}, other{0};
  std::vector<std::thread> signers;
  for (int i = 0; i < 4; ++i) {
    signers.emplace_back([&] {
      firma::Client c(rig.socket().string());
      while (go) {
        try {
          c.sign_digest("empresa", firma::Bytes(32, 2));
          ++ok;
        } catch (const firma::Error& e) {
          (e.short_name() == "KeyCancelled" ? cancelled : other)++;
        }
      }
    });
  }
  ASSERT_TRUE(eventually([&] { return ok > 20; }));
  auto r = ctl("cancel empresa --reason 'USB extraviada' --yes");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const int ok_at_cancel = ok;
  ASSERT_TRUE(eventually([&] { return cancelled > 20; }));
  go = false;
  for (auto& t : signers) t.join();
  EXPECT_LE(ok - ok_at_cancel, 4) << "at most the signatures already in flight finish after Cancel";
  EXPECT_EQ(other, 0);
  EXPECT_NE(r.out.find("3 object(s) destroyed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("in person"), std::string::npos) << r.out;
  r = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin + " --list-objects");
  EXPECT_EQ(r.out.find("label:      empresa"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("label:      firma-ec"), std::string::npos) << "other keys stay";
  // Recorded: after a restart the key is still cancelled, with its reason.
  start();
  for (const auto& k : client().list_keys()) {
    if (k["alias"] != "empresa") continue;
    EXPECT_EQ(k["cancelled"]["reason"], "USB extraviada");
    EXPECT_FALSE(k["found"].get<bool>());
  }
  EXPECT_NE(ctl("status").out.find("CANCELLED"), std::string::npos);
  EXPECT_EQ(run("setsid -w " + quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " cancel firma-ec --reason x").exit_code, 2) << "without --yes and no terminal: not confirmed";
  EXPECT_EQ(client().sign_digest("firma-ec", firma::Bytes(32, 3)).empty(), false);
}

// The cancelling instructions tell the holder to import the replacement:
// under the cancelled alias, a configured key's or an imported one's, it is
// served with the key's configuration and the cancellation stays in its
// history; restarts keep both. A live alias stays refused, and of two
// imports racing for one alias exactly one wins.
TEST_F(Credentials, ReplacementCredentialIsImportedUnderTheCancelledAlias) {
  make_credential("viejo");
  make_credential("nuevo", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256", "/C=MX/O=PATRON DEMO/CN=PATRON DEMO SA DE CV", "0x3031");
  write_file(work / "doc.txt", "reposicion");
  for (const std::string name : {"viejo", "nuevo"}) {
    auto r = run("cd " + quote(work.string()) + " && openssl pkcs12 -export -inkey " + name + ".pem -in " + name +
                 ".crt.pem -passout pass:s3creto -out " + name + ".pfx");
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  auto import = [&](const std::string& alias, const std::string& pfx, const std::string& more = "") {
    return ctl("import " + alias + " --token demo --pfx " + f(pfx) + " --password-stdin" + more, "s3creto");
  };
  auto entry = [&](const std::string& alias) {
    for (const auto& k : client().list_keys())
      if (k["alias"] == alias) return k;
    return firma::Json();
  };

  // A live alias is refused.
  auto r = import("empresa", "nuevo.pfx");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("a key named empresa already exists"), std::string::npos) << r.out;

  // empresa (named by firmad.toml), cancelled, then replaced.
  ASSERT_EQ(ctl("cancel empresa --reason 'USB extraviada' --yes").exit_code, 0);
  ASSERT_EQ(ctl("request empresa --submitted 2026-11-30").exit_code, 0);
  r = import("empresa", "nuevo.pfx", " --allow-user 1000");
  EXPECT_EQ(r.exit_code, 1) << "a replacement keeps the key's allow lists: " << r.out;
  EXPECT_NE(r.out.find("allowUsers"), std::string::npos) << r.out;
  r = import("empresa", "nuevo.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log();
  sign_to("empresa", "doc.txt", "empresa.sig");
  EXPECT_TRUE(verifies("nuevo.crt.pem", "empresa.sig", "doc.txt"));
  auto k = entry("empresa");
  EXPECT_FALSE(k.contains("cancelled")) << k.dump();
  EXPECT_FALSE(k.contains("request")) << "the request it tracked is served: " << k.dump();
  ASSERT_EQ(k["history"].size(), 1u) << k.dump();
  EXPECT_EQ(k["history"][0]["reason"], "USB extraviada");

  // An imported key, cancelled, then replaced.
  ASSERT_EQ(import("propia", "viejo.pfx", " --allow-user 0 --npie 12345678901").exit_code, 0);
  ASSERT_EQ(ctl("cancel propia --reason 'cambio de representante' --yes").exit_code, 0);
  r = import("propia", "nuevo.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  sign_to("propia", "doc.txt", "propia.sig");
  EXPECT_TRUE(verifies("nuevo.crt.pem", "propia.sig", "doc.txt"));
  EXPECT_EQ(entry("propia")["npie"], "12345678901");

  // After a restart: the new credentials, not cancelled, with their history.
  start();
  for (const std::string alias : {"empresa", "propia"}) {
    k = entry(alias);
    EXPECT_FALSE(k.contains("cancelled")) << k.dump();
    EXPECT_EQ(k["history"].size(), 1u) << k.dump();
    sign_to(alias, "doc.txt", alias + "2.sig");
    EXPECT_TRUE(verifies("nuevo.crt.pem", alias + "2.sig", "doc.txt"));
  }
  EXPECT_EQ(client().list_keys().size(), 5u);
  r = ctl("status");
  EXPECT_NE(r.out.find("a credential cancelled"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cambio de representante"), std::string::npos) << r.out;

  // Two imports racing for one new alias: exactly one wins.
  std::vector<std::future<CommandResult>> racing;
  for (int i = 0; i < 2; ++i) racing.push_back(std::async(std::launch::async, [&] { return import("carrera", "viejo.pfx", " --allow-user 0"); }));
  int won = 0, exists = 0;
  for (auto& f : racing) {
    const auto result = f.get();
    won += result.exit_code == 0;
    exists += result.out.find("a key named carrera already exists") != std::string::npos;
  }
  EXPECT_EQ(won, 1);
  EXPECT_EQ(exists, 1);
  int listed = 0;
  for (const auto& key : client().list_keys()) listed += key["alias"] == "carrera";
  EXPECT_EQ(listed, 1);
  start();
  listed = 0;
  for (const auto& key : client().list_keys()) listed += key["alias"] == "carrera";
  EXPECT_EQ(listed, 1) << "state.json agrees";
}

}  // namespace
}  // namespace firmad::test
