// Certificate renewal end to end: a real firmad on a SoftHSM token renewing against a real CA on loopback.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <sstream>
#include <thread>

#include "renewal_fixture.hpp"

namespace firmad::test {
namespace {

TEST_F(Renewal, IdseRenewsWithANewKeyOnTheTokenAndStreamsEachStep) {
  start_ca();
  start(table("empresa", "idse"));
  const auto before = key("empresa");
  const long certs_before = certificates_on_token();
  auto r = ctl("renew empresa");
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log();
  for (const char* step : {"started", "key-pending", "key-ready", "request-built", "submitted", "issued", "verified", "installed", "retired"})
    EXPECT_NE(r.out.find(std::string("  ") + step + ": "), std::string::npos) << step << "\n" << r.out;

  const auto after = key("empresa");
  EXPECT_EQ(after["renewal"]["state"], "retired");
  EXPECT_NE(after["certificate"]["serial"], before["certificate"]["serial"]);
  EXPECT_NE(after["publicKey"], before["publicKey"]) << "a new key was asked for";
  // The installed certificate is the token key's, the file holds it, and signatures verify with it.
  EXPECT_EQ(certificate_key(out / "empresa.pem"), after["publicKey"].get<std::string>());
  EXPECT_EQ(read_file(token_certificate("empresa")), read_file(out / "empresa.pem"));
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
  EXPECT_EQ(run("openssl verify -CAfile " + quote(rig.ca().string()) + " " + quote((out / "empresa.pem").string())).exit_code, 0);
  EXPECT_EQ(read_file(out / "empresa-chain.pem"), read_file(rig.ca()));
  // The old certificate left the token for a backup file; nothing else piled up.
  EXPECT_EQ(certificates_on_token(), certs_before);
  EXPECT_TRUE(fs::exists(rig.dir() / "state" / "backup" / ("empresa-" + before["certificate"]["serial"].get<std::string>() + ".pem")));
  // The new key is private, sensitive and stays on the token.
  auto attrs = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
                   " --list-objects --type privkey 2>/dev/null");
  EXPECT_NE(attrs.out.find("never extractable"), std::string::npos) << attrs.out;
  // The renewal's own signatures are in the audit trail, the administrator's call too.
  const std::string audit = read_file(rig.audit_log());
  for (const char* what : {"method=renewal-csr key=empresa", "method=renewal-acceptance key=empresa",
                           "method=renewal-self-test key=empresa", "event=call method=Renew key=empresa"})
    EXPECT_NE(audit.find(what), std::string::npos) << what << " not in:\n" << audit;

  // After a restart firmad serves the new pair.
  start(table("empresa", "idse"));
  EXPECT_EQ(key("empresa")["publicKey"], after["publicKey"]);
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
  EXPECT_NE(ca->requests().find("POST /idse/solicitudRenovacion.idse 200"), std::string::npos) << ca->requests();

  // An administrator who points the key elsewhere in firmad.toml wins over the renewal's record.
  daemon.reset();
  daemon = std::make_unique<Daemon>(
      rig.write_config({{"uri = \"pkcs11:object=empresa;id=%01\"", "uri = \"pkcs11:object=firma-p384;id=%04\""}}), rig.socket());
  ASSERT_TRUE(daemon->wait_for_log("event=token-login ")) << daemon->log();
  EXPECT_TRUE(daemon->wait_for_log("event=renewed-key-uri-ignored level=warning key=empresa")) << daemon->log();
  EXPECT_EQ(key("empresa")["curve"], "P-384");
}

// A token that would refuse the new key's objects (a PIV card's module
// writes only for its security officer, and reads CKA_ID as a PIV slot) is
// known before the renewal changes anything: the renewal is refused with the
// reason, the old key and certificate stay and sign (issue 10, item 7).
TEST_F(Renewal, NewKeyOnATokenThatRefusesUserWritesIsRefusedBeforeAnythingChanges) {
  const fs::path control = rig.dir() / "fault";
  write_file(control, "piv");
  ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  start_ca();
  start(table("empresa", "idse"), "", false, {{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""}});
  ::unsetenv("FIRMAD_FAULT_CONTROL");
  const auto before = key("empresa");
  const long certs_before = certificates_on_token();
  auto r = ctl("renew empresa");
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("security officer"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("key = \"reuse\""), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("key-pending"), std::string::npos) << "no key was generated\n" << r.out;
  EXPECT_TRUE(daemon->wait_for_log("event=token-write-probe level=info token=demo create=\"C_CreateObject(certificate): CKR_USER_TYPE_INVALID\" relabel=\"not tried\""))
      << daemon->log();
  const auto after = key("empresa");
  EXPECT_EQ(after["publicKey"], before["publicKey"]);
  EXPECT_EQ(after["certificate"]["serial"], before["certificate"]["serial"]);
  EXPECT_EQ(certificates_on_token(), certs_before);
  EXPECT_EQ(ca->requests().find("solicitudRenovacion"), std::string::npos) << "nothing was sent to the CA";
}

TEST_F(Renewal, JsonProgressIsOneObjectPerStep) {
  start_ca();
  start(table("firma-ec", "helper", "key = \"reuse\"\n"));
  auto r = ctl("renew firma-ec --json");
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log();
  int lines = 0;
  std::string last;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    auto j = firma::Json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    EXPECT_EQ(j["key"], "firma-ec");
    last = j["state"];
    ++lines;
  }
  EXPECT_GE(lines, 7);
  EXPECT_EQ(last, "retired");
  EXPECT_TRUE(signs_for("firma-ec", out / "firma-ec.pem"));
}

TEST_F(Renewal, AcceptanceIsSignedWithTheExpiredCertificateAndRenewalRevivesTheKey) {
  // An RSA key whose certificate ended in 2024, put on the token as IMSS's would be.
  const fs::path w = rig.dir() / "old";
  fs::create_directories(w);
  auto r = run("cd " + quote(w.string()) + " && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k.pem && "
               "openssl req -new -key k.pem -subj '/O=PATRON VENCIDO/CN=PATRON VENCIDO' -out k.csr && "
               "printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=idx\\nnew_certs_dir=.\\nserial=ser\\ndefault_md=sha256\\npolicy=p\\n[p]\\ncommonName=supplied\\norganizationName=optional\\n' > ca.cnf && "
               "touch idx && echo 01 > ser && openssl ca -batch -config ca.cnf -cert " + quote(rig.ca().string()) + " -keyfile " +
               quote((rig.dir() / "ca" / "ca.key").string()) + " -in k.csr -out k.crt -startdate 20240101000000Z -enddate 20240301000000Z && "
               "openssl x509 -in k.crt -outform DER -out k.der && "
               "softhsm2-util --import k.pem --token firmad-demo --label vencido --id 05 --pin 123456 && "
               "pkcs11-tool --module " + TokenRig::kModule + " --login --pin 123456 --write-object k.der --type cert --id 05 --label vencido");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  start_ca();
  start("\n[keys.vencido]\ntoken = \"demo\"\nuri = \"pkcs11:object=vencido;id=%05\"\nallow_users = [" +
        std::to_string(::getuid()) + "]\nnpie = \"B0000000001\"\n" + table("vencido", "idse") + table("empresa", "idse"));
  // Past every warning threshold: status and the log say so.
  EXPECT_EQ(key("vencido")["renewal"].value("warningDays", -1), 0);
  EXPECT_TRUE(daemon->wait_for_log("event=certificate-expiring level=warning key=vencido")) << daemon->log();
  EXPECT_EQ(key("empresa")["renewal"].count("warningDays"), 0u) << "a fresh certificate warns of nothing";
  write_file(out / "x.txt", "x");
  EXPECT_EQ(ctl("sign vencido " + quote((out / "x.txt").string()) + " -o " + quote((out / "x.sig").string())).exit_code, 1)
      << "an expired certificate signs nothing for clients";
  r = ctl("renew vencido");
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log() << ca->log();
  EXPECT_TRUE(signs_for("vencido", out / "vencido.pem"));
}

TEST_F(Renewal, HelperProviderFollowsCertmongersContractIncludingWaitAndPoll) {
  start_ca();  // not used by the helper; keeps table() simple
  fs::create_directories(rig.dir() / "ca" / "helper");
  write_file(rig.dir() / "ca" / "helper" / "control", "wait");
  start(table("empresa", "helper", "key = \"reuse\"\n"));
  const auto before = key("empresa");
  auto r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 6) << r.out;  // waiting: firmad polls by itself
  EXPECT_NE(r.out.find("waiting"), std::string::npos) << r.out;
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  const auto after = key("empresa");
  EXPECT_EQ(after["publicKey"], before["publicKey"]) << "key = reuse keeps the key";
  EXPECT_NE(after["certificate"]["serial"], before["certificate"]["serial"]);
  EXPECT_EQ(certificates_on_token(), 3) << "the old certificate of the reused key is gone";
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
  const std::string calls = read_file(rig.dir() / "ca" / "helper" / "calls.log");
  EXPECT_NE(calls.find("SUBMIT 1"), std::string::npos) << calls;
  EXPECT_NE(calls.find("POLL 0"), std::string::npos) << calls;
}

TEST_F(Renewal, EstReenrollsOverTlsAuthenticatedByTheTokenKey) {
  start_ca(true);
  start(table("firma-ec", "est") + table("empresa", "est"));
  for (const char* alias : {"firma-ec", "empresa"}) {
    const auto before = key(alias);
    auto r = ctl(std::string("renew ") + alias);
    ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log() << ca->log();
    EXPECT_NE(key(alias)["certificate"]["serial"], before["certificate"]["serial"]);
    EXPECT_TRUE(signs_for(alias, out / (std::string(alias) + ".pem")));
  }
  const std::string log = ca->requests();
  EXPECT_NE(log.find("GET /.well-known/est/cacerts 200"), std::string::npos) << log;
  EXPECT_NE(log.find("POST /.well-known/est/simplereenroll 200"), std::string::npos) << log;
  EXPECT_EQ(log.find("simplereenroll 401"), std::string::npos) << "the client certificate was presented: " << log;
}

// Every way the CA can fail ends in a named state, installs nothing, and the
// old certificate keeps signing.
TEST_F(Renewal, EachCaFailureEndsInANamedStateAndTheOldCertificateStillSigns) {
  start_ca();
  // Automatic retries far off: each case's state is what its own 'renew' left.
  start(table("empresa", "idse", "retry_initial = \"60s\"\nretry_max = \"120s\"\n"));
  const std::string old_serial = serial("empresa");
  const long certs = certificates_on_token();
  write_file(out / "old.pem", "");
  run("pkcs11-tool --module " + std::string(TokenRig::kModule) + " --read-object --type cert --id 01 -o " +
      quote((out / "old.der").string()) + " && openssl x509 -inform DER -in " + quote((out / "old.der").string()) +
      " -out " + quote((out / "old.pem").string()));
  // In an order where each case meets the renewal the previous one left:
  // retryable failures keep it under way (the next 'renew' goes on with it),
  // the others end it (the next 'renew' starts afresh).
  const std::pair<const char*, const char*> cases[] = {
      {"submit:http500", "ca-unreachable"},      {"submit:timeout", "ca-unreachable"},
      {"submit:redirect_loop", "ca-unreachable"}, {"fetch:garbage", "verification-failed"},
      {"wrong_key", "verification-failed"},      {"expired", "verification-failed"},
      {"untrusted", "verification-failed"},      {"reject", "rejected"},
      {"fetch:huge", "waiting"},                 {"fetch:endless", "ca-unreachable"},
      {"fetch:http500", "ca-unreachable"}};
  for (const auto& [mode, expected] : cases) {
    SCOPED_TRACE(mode);
    ca->control(mode);
    auto r = ctl("renew empresa");
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_EQ(state("empresa"), expected) << r.out;
    if (std::string(expected) != "waiting") {
      EXPECT_NE(key("empresa")["renewal"].value("reason", ""), "");
    }
    EXPECT_EQ(serial("empresa"), old_serial);
    EXPECT_FALSE(fs::exists(out / "empresa.pem"));
    EXPECT_TRUE(signs_for("empresa", out / "old.pem"));
  }
  // Abandoned new keys were cleaned up as each new attempt started: at most one is left.
  EXPECT_EQ(certificates_on_token(), certs);
  // And once the CA behaves, the same key renews.
  ca->control("");
  auto r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 0) << r.out << daemon->log();
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

// The same for the helper and EST providers.
TEST_F(Renewal, HelperAndEstFailuresEndInNamedStatesAndTheOldCertificatesStillSign) {
  start_ca(true);
  // Automatic retries far off: each case's state is what its own 'renew' left.
  const std::string slow_retry = "retry_initial = \"60s\"\nretry_max = \"120s\"\n";
  start(table("firma-p384", "helper", "key = \"reuse\"\nhelper_timeout = \"5s\"\nhelper_max_output = 65536\n" + slow_retry) +
        table("firma-ec", "est", slow_retry));
  run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --read-object --type cert --id 04 -o " +
      quote((out / "p384.der").string()) + " && openssl x509 -inform DER -in " + quote((out / "p384.der").string()) + " -out " +
      quote((out / "p384.pem").string()));
  run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --read-object --type cert --id 02 -o " +
      quote((out / "ec.der").string()) + " && openssl x509 -inform DER -in " + quote((out / "ec.der").string()) + " -out " +
      quote((out / "ec.pem").string()));
  fs::create_directories(rig.dir() / "ca" / "helper");
  const std::pair<const char*, const char*> helper_cases[] = {
      {"reject", "rejected"}, {"unreachable", "ca-unreachable"}, {"hang", "ca-unreachable"}, {"huge", "ca-unreachable"},
      {"garbage", "verification-failed"}, {"wrong_key", "verification-failed"}, {"expired", "verification-failed"},
      {"untrusted", "verification-failed"}};
  for (const auto& [mode, expected] : helper_cases) {
    SCOPED_TRACE(std::string("helper ") + mode);
    write_file(rig.dir() / "ca" / "helper" / "control", mode);
    auto r = ctl("renew firma-p384");
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_EQ(state("firma-p384"), expected) << r.out;
    EXPECT_TRUE(signs_for("firma-p384", out / "p384.pem"));
  }
  const std::pair<const char*, const char*> est_cases[] = {
      {"reenroll:reject", "rejected"}, {"reenroll:http500", "ca-unreachable"}, {"wrong_key", "verification-failed"},
      {"expired", "verification-failed"}, {"untrusted", "verification-failed"}, {"reenroll:garbage", "verification-failed"},
      {"cacerts:garbage", "verification-failed"}, {"reenroll:huge", "ca-unreachable"}};
  for (const auto& [mode, expected] : est_cases) {
    SCOPED_TRACE(std::string("est ") + mode);
    ca->control(mode);
    auto r = ctl("renew firma-ec");
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_EQ(state("firma-ec"), expected) << r.out;
    EXPECT_TRUE(signs_for("firma-ec", out / "ec.pem"));
  }
  EXPECT_FALSE(fs::exists(out / "firma-p384.pem"));
  EXPECT_FALSE(fs::exists(out / "firma-ec.pem"));
}

TEST_F(Renewal, UnreachableCaIsRetriedWithBackoffAndRecoversByItself) {
  start_ca();
  ca->control("submit:http500");
  // (A first retry 5 s away: nextTry is in whole seconds, and 1 s may pass
  // before the status below is asked on a loaded machine.)
  start(table("empresa", "idse", "retry_initial = \"5s\"\nretry_max = \"10s\"\n"));
  auto r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 6) << r.out;
  EXPECT_EQ(state("empresa"), "ca-unreachable");
  EXPECT_TRUE(key("empresa")["renewal"].contains("nextTry"));
  ca->control("");
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  EXPECT_GE(key("empresa")["renewal"].value("attempts", 0), 0);
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

TEST_F(Renewal, FetchRecoversAnIssuedCertificateOnlyForAKeyOnTheToken) {
  start_ca();
  // The CA issues, but what it sends back is garbage: the renewal fails for good.
  ca->control("fetch:garbage");
  // A first retry 5 s away, not 1 s: 'waiting' below is what renew left, not
  // what a retry a second later (HTTP 500: ca-unreachable) made of it on a
  // loaded machine; the retries after that fetch the certificate by themselves.
  start(table("empresa", "idse", "retry_initial = \"5s\"\nretry_max = \"10s\"\n"));
  const std::string old_serial = serial("empresa");
  EXPECT_EQ(ctl("renew empresa").exit_code, 1);
  EXPECT_EQ(state("empresa"), "verification-failed");
  // The certificate waits at the CA for the renewal's new key: fetch finds it by NPIE.
  ca->control("");
  auto r = ctl(std::string("fetch empresa --npie ") + kNpie);
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log();
  EXPECT_NE(serial("empresa"), old_serial);
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
  EXPECT_EQ(certificates_on_token(), 3);

  // While a renewal is under way, fetch leaves it alone: it polls by itself.
  ca->control("fetch:http500");
  r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 6) << r.out;
  EXPECT_EQ(state("empresa"), "waiting") << r.out;
  r = ctl(std::string("fetch empresa --npie ") + kNpie);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("RenewalInProgress"), std::string::npos) << r.out;
  ca->control("");
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();

  // A certificate issued for some other key is refused and nothing changes.
  const std::string now_serial = serial("empresa");
  ca->control("wrong_key");
  (void)ctl("renew empresa");  // the CA issues the wrong certificate: verification fails
  auto issued = run("ls -t " + quote((ca->dir() / "issued").string()) + " | head -1 | sed 's/\\.der$//'");
  ca->control("");
  r = ctl("fetch empresa --serial " + issued.out.substr(0, issued.out.find('\n')));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("not on the token"), std::string::npos) << r.out;
  EXPECT_EQ(serial("empresa"), now_serial);
}

TEST_F(Renewal, SignaturesRacingARenewalOfTheSameKeyAllSucceed) {
  start_ca();
  start(table("empresa", "idse"));
  std::atomic<bool> done{false};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> signers;
  for (int i = 0; i < 4; ++i)
    signers.emplace_back([&] {
      firma::Client c(rig.socket().string());
      while (!done) {
        try {
          c.sign_digest("empresa", firma::Bytes(32, 7));
          ++ok;
        } catch (const std::exception&) {
          ++failed;
        }
      }
    });
  auto r = ctl("renew empresa");
  done = true;
  for (auto& t : signers) t.join();
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_GT(ok.load(), 20);
  EXPECT_EQ(failed.load(), 0);
}

TEST_F(Renewal, DueCertificatesRenewByThemselvesOnceAndCheckReportsThem) {
  start_ca();
  // Not due until 30 days before the end of a one-year certificate.
  start(table("empresa", "idse", "before_days = 30\njitter = \"0s\"\n"));
  auto r = ctl("renew --check");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("no certificate needs renewal"), std::string::npos) << r.out;
  // Due (400 days before the end of a one-year certificate) but not automatic: --check says so.
  start(table("empresa", "idse", "before_days = 400\njitter = \"0s\"\n"));
  r = ctl("renew --check");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("empresa: due since"), std::string::npos) << r.out;
  EXPECT_EQ(state("empresa"), "none");
  // Automatic: firmad renews by itself — once, even though this window makes
  // every new certificate due at once.
  start(table("firma-ec", "helper", "automatic = true\nbefore_days = 400\njitter = \"0s\"\nkey = \"reuse\"\n"));
  ASSERT_TRUE(eventually([&] { return state("firma-ec") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  EXPECT_TRUE(daemon->wait_for_log("event=renewal-window-too-early level=warning key=firma-ec")) << daemon->log();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // time for a loop to show itself
  const std::string log = daemon->log();
  std::size_t starts = 0;
  for (auto at = log.find("event=renewal-due"); at != std::string::npos; at = log.find("event=renewal-due", at + 1)) ++starts;
  EXPECT_EQ(starts, 1u) << log;
  EXPECT_EQ(ctl("renew --check").exit_code, 1) << "still due: the window is wrong, and --check says so";
}

TEST_F(Renewal, FilesGetTheirModeAndThePostInstallCommandRunsWithinItsLimit) {
  start_ca();
  const fs::path marker = out / "reloaded";
  start(table("empresa", "idse", "file_mode = \"0640\"\npost_install = [\"/bin/sh\", \"-c\", \"echo $FIRMAD_KEY > " +
                                     marker.string() + "\"]\n") +
        table("firma-p384", "helper", "key = \"reuse\"\npost_install = [\"/bin/sleep\", \"30\"]\npost_install_timeout = \"500ms\"\n"));
  auto r = ctl("renew empresa");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(read_file(marker), "empresa\n");
  EXPECT_EQ(fs::status(out / "empresa.pem").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  // A post-install command that hangs is killed at its limit; the renewal stands and says so.
  r = ctl("renew firma-p384");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("post-install command failed (killed after 500 ms)"), std::string::npos) << r.out;
  EXPECT_TRUE(signs_for("firma-p384", out / "firma-p384.pem"));
}

// The final step as shipped: certificate files that cannot be written stop
// the renewal underconfigured, with the reason, and it is not retried by
// itself (the token already serves the new pair); once fixed, 'renew'
// finishes it. The post-install command runs once per installed
// certificate, also when firmad dies right after it.
TEST_F(Renewal, UnwritableCertificateFilesStopUnderconfiguredAndPostInstallRunsOncePerCertificate) {
  start_ca();
  const fs::path certs = out / "certs", runs = out / "post-install-runs";
  std::string tables = table("empresa", "idse", "post_install = [\"/bin/sh\", \"-c\", \"echo $FIRMAD_KEY >> " + runs.string() + "\"]\n");
  for (const std::string name : {"empresa.pem", "empresa-chain.pem"})
    tables.replace(tables.find((out / name).string()), (out / name).string().size(), (certs / name).string());
  start(tables);
  auto r = ctl("renew empresa");
  EXPECT_NE(r.exit_code, 0) << r.out;
  ASSERT_EQ(state("empresa"), "underconfigured") << key("empresa").dump();
  const std::string reason = key("empresa")["renewal"].value("reason", "");
  EXPECT_NE(reason.find("cannot write the certificate files"), std::string::npos) << reason;
  EXPECT_NE(reason.find((certs / "empresa.pem").string()), std::string::npos) << reason;
  EXPECT_NE(reason.find("'firmactl renew empresa' finishes the renewal"), std::string::npos) << reason;
  EXPECT_FALSE(fs::exists(runs)) << "post-install waits for the files";
  // Installed already: the new certificate signs, and nothing is retried by itself.
  const std::string installed = serial("empresa");
  EXPECT_TRUE(signs_for("empresa", token_certificate("empresa")));
  const auto tries = [&] {
    const std::string log = daemon->log();
    std::size_t n = 0;
    for (std::size_t at = log.find("cannot write the certificate files"); at != std::string::npos;
         at = log.find("cannot write the certificate files", at + 1))
      ++n;
    return n;
  };
  const std::size_t before = tries();
  // No retry within three of its retry_initial (1 s) periods; a retry ends the wait at once.
  EXPECT_FALSE(eventually([&] { return tries() > before; }, std::chrono::seconds(3))) << daemon->log();
  EXPECT_EQ(state("empresa"), "underconfigured");

  fs::create_directories(certs);
  r = ctl("renew empresa");
  ASSERT_EQ(r.exit_code, 0) << r.out << daemon->log();
  EXPECT_EQ(state("empresa"), "retired");
  EXPECT_EQ(serial("empresa"), installed) << "finished, not renewed again";
  EXPECT_EQ(read_file(certs / "empresa.pem"), read_file(token_certificate("empresa")));
  EXPECT_EQ(read_file(runs), "empresa\n");

  // Killed right after the post-install command: the restart finishes the
  // renewal without running it again.
  start(tables, "post-install-ran");
  (void)ctl("renew empresa");
  ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(20))) << daemon->log();
  start(tables);
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  EXPECT_NE(serial("empresa"), installed);
  EXPECT_EQ(read_file(runs), "empresa\nempresa\n") << "once per installed certificate";
}

TEST_F(Renewal, WithoutTheTokensPinTheRenewalWaitsAndGoesOnAfterLogin) {
  start_ca();
  start(table("empresa", "idse"), "", /*pin_from_admin=*/true);
  auto r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 6) << r.out;
  EXPECT_EQ(state("empresa"), "needs-pin") << r.out;
  EXPECT_NE(key("empresa")["renewal"].value("reason", "").find("firmactl login"), std::string::npos);
  r = run("printf '%s\\n' 123456 | " + quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) +
          " login demo --pin-stdin");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

TEST_F(Renewal, RenewDueRenewsExactlyTheKeysThatAreDue) {
  start_ca();
  start(table("empresa", "idse", "before_days = 30\n") +
        table("firma-ec", "helper", "before_days = 400\njitter = \"0s\"\nkey = \"reuse\"\n"));
  const std::string empresa = serial("empresa"), ec = serial("firma-ec");
  auto r = ctl("renew --due");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("firma-ec  retired"), std::string::npos) << r.out << ctl("status --json").out;
  EXPECT_EQ(serial("empresa"), empresa);
  EXPECT_NE(serial("firma-ec"), ec);
  EXPECT_EQ(state("empresa"), "none");
}

TEST_F(Renewal, AbsentTokenAndMissingSettingsAreNamedStates) {
  start_ca();
  // The token behind the fault-injecting module: taken out before the renewal starts.
  const fs::path control = rig.dir() / "fault";
  write_file(control, "");
  ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  start(table("empresa", "idse") + table("firma-ec", "idse") +
            table("firma-p384", "helper", "key = \"reuse\"\n"),
        "", false,
        {{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""},
         {"sessions", "sessions = 1\nrefresh_interval_ms = 100"}});
  ::unsetenv("FIRMAD_FAULT_CONTROL");
  // firma-ec has no NPIE: the idse provider cannot work, and says why.
  auto r = ctl("renew firma-ec");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(state("firma-ec"), "underconfigured");
  EXPECT_NE(r.out.find("npie"), std::string::npos) << r.out;
  // The helper reports it is not configured (exit 4).
  fs::create_directories(rig.dir() / "ca" / "helper");
  write_file(rig.dir() / "ca" / "helper" / "control", "underconfigured");
  EXPECT_EQ(ctl("renew firma-p384").exit_code, 1);
  EXPECT_EQ(state("firma-p384"), "underconfigured");
  // No token: token-absent, retried by itself once the token is back.
  write_file(control, "removed");
  ASSERT_TRUE(eventually([&] { return !key("empresa").is_null() && ctl("status --json").out.find("\"present\": false") != std::string::npos; }))
      << daemon->log();
  r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 6) << r.out;
  EXPECT_EQ(state("empresa"), "token-absent") << r.out;
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

TEST_F(Renewal, AnAutomaticRenewalWaitingForTheCaIsNeverStartedAgain) {
  start_ca();
  fs::create_directories(rig.dir() / "ca" / "helper");
  write_file(rig.dir() / "ca" / "helper" / "control", "retry=30");
  start(table("firma-ec", "helper", "automatic = true\nbefore_days = 400\njitter = \"0s\"\nkey = \"reuse\"\n"));
  ASSERT_TRUE(eventually([&] { return state("firma-ec") == "waiting"; }, std::chrono::seconds(20))) << daemon->log();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // time for a loop to show itself
  const std::string log = daemon->log();
  std::size_t starts = 0;
  for (auto at = log.find("event=renewal-due"); at != std::string::npos; at = log.find("event=renewal-due", at + 1)) ++starts;
  EXPECT_EQ(starts, 1u) << log;
  const std::string calls = read_file(rig.dir() / "ca" / "helper" / "calls.log");
  EXPECT_EQ(calls, "SUBMIT 5\n") << calls;
  EXPECT_EQ(state("firma-ec"), "waiting");
  EXPECT_TRUE(key("firma-ec")["renewal"].contains("nextTry"));
}

TEST_F(Renewal, CancellingTheKeyStopsItsRenewalAndRemovesTheUninstalledNewKey) {
  start_ca();
  ca->control("fetch:http500");  // issued, but the download keeps failing: the renewal waits
  start(table("empresa", "idse"));
  EXPECT_EQ(ctl("renew empresa").exit_code, 6);
  auto objects = [&] {
    return run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
               " --list-objects 2>/dev/null").out;
  };
  ASSERT_NE(objects().find("empresa.renewal"), std::string::npos) << objects();
  auto r = ctl("cancel empresa --reason perdido --yes");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  ASSERT_TRUE(eventually([&] { return state("empresa") == "underconfigured"; })) << daemon->log();
  EXPECT_EQ(key("empresa")["renewal"].value("reason", ""), "the key was cancelled");
  EXPECT_TRUE(eventually([&] { return objects().find("empresa.renewal") == std::string::npos; })) << objects();
  ca->control("");
  EXPECT_EQ(ctl("renew empresa").exit_code, 1) << "a cancelled key is not renewed";
}

// kill -9 at every step, install included: after a restart the token and the
// files hold a consistent pair and the renewal finishes by itself.
TEST_F(Renewal, KillNineAtEveryStepLeavesAConsistentPairAndResumes) {
  start_ca();
  const std::string tables = table("empresa", "idse");
  for (const char* point : {"started", "key-pending", "key-ready", "request-built", "submitted", "issued", "verified",
                            "certificate-written", "installed", "old-certificate-removed", "retired"}) {
    SCOPED_TRACE(point);
    start(tables, point);
    const std::string before = serial("empresa");
    (void)ctl("renew empresa");  // cut short by the crash (at "retired" the reply may get out first)
    ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(20))) << daemon->log();
    start(tables);
    ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20)))
        << state("empresa") << "\n" << daemon->log();
    const auto k = key("empresa");
    EXPECT_NE(k["certificate"]["serial"], before);
    // Token: the key served and its certificate belong together, and one certificate is left.
    EXPECT_EQ(certificate_key(token_certificate("empresa")), k["publicKey"].get<std::string>());
    EXPECT_EQ(certificates_on_token(), 3);
    // Files: the certificate file is the token's.
    EXPECT_EQ(read_file(out / "empresa.pem"), read_file(token_certificate("empresa")));
    EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
  }
}

// Renew, die during the next renewal, resume, renew again in the same
// process, restart cleanly: whatever URI form firmad.toml uses, the key the
// last renewal installed is the one served, and it signs.
class RenewalSequence : public Renewal, public ::testing::WithParamInterface<std::string> {};

TEST_P(RenewalSequence, RenewedKeyStaysServedThroughResumesRenewalsAndRestarts) {
  start_ca();
  const std::string tables = table("empresa", "idse");
  const std::map<std::string, std::string> config{
      {"uri = \"pkcs11:object=empresa;id=%01\"", "uri = \"" + GetParam() + "\"\nnpie = \"" + std::string(kNpie) + "\""}};
  start(tables, "", false, config);
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  daemon.reset();

  start(tables, "submitted", false, config);
  (void)ctl("renew empresa");  // cut short by the crash
  ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(20))) << daemon->log();
  start(tables, "", false, config);
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(20))) << daemon->log();
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  const std::string last = serial("empresa");
  ASSERT_EQ(daemon->terminate(), 0);

  start(tables, "", false, config);
  const auto k = key("empresa");
  EXPECT_TRUE(k.value("found", false)) << k.dump() << "\n" << daemon->log();
  EXPECT_EQ(serial("empresa"), last) << "the key of the last renewal is served";
  EXPECT_EQ(daemon->log().find("renewed-key-uri-ignored"), std::string::npos) << daemon->log();
  EXPECT_EQ(read_file(out / "empresa.pem"), read_file(token_certificate("empresa")));
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

INSTANTIATE_TEST_SUITE_P(UriForms, RenewalSequence,
                         ::testing::Values("pkcs11:object=empresa;id=%01", "pkcs11:id=%01", "pkcs11:object=empresa"),
                         [](const auto& info) {
                           return std::string(info.index == 0 ? "LabelAndId" : info.index == 1 ? "IdOnly" : "LabelOnly");
                         });

// After renewals, an administrator who points the key elsewhere in
// firmad.toml wins over what the renewals recorded.
TEST_F(Renewal, AdministratorsEditOfTheUriWinsOverTheRenewedKey) {
  start_ca();
  const std::string tables = table("empresa", "idse");
  start(tables);
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  ASSERT_EQ(daemon->terminate(), 0);
  // The original key pair, still on the token as it was.
  const std::string edited = "pkcs11:id=%01";
  start(tables, "", false,
        {{"uri = \"pkcs11:object=empresa;id=%01\"", "uri = \"" + edited + "\"\nnpie = \"" + std::string(kNpie) + "\""}});
  EXPECT_EQ(key("empresa").value("uri", ""), edited) << daemon->log();
  EXPECT_NE(daemon->log().find("event=renewed-key-uri-ignored"), std::string::npos) << daemon->log();
  EXPECT_TRUE(key("empresa").value("found", false)) << key("empresa").dump();
}

// No key object is written to once made (a token rewrites an object in
// place, and a kill mid-write would leave its only copy empty): the new key
// keeps the label it was made with and is served by CKA_ID, the previous pair
// stays as it was.
TEST_F(Renewal, NoKeyObjectIsWrittenToOnceMade) {
  start_ca();
  start(table("empresa", "idse"));
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  const auto objects = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
                           " --list-objects --type privkey 2>/dev/null").out;
  EXPECT_NE(objects.find("label:      empresa.renewal"), std::string::npos) << objects;
  EXPECT_NE(objects.find("label:      empresa\n  ID:         01"), std::string::npos) << "the previous key, untouched\n" << objects;
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

// A new pair torn after the commit point (its private key gone) is found
// before anything of the old pair is removed: the old pair is served again,
// also after a restart, and the renewal stops in a named failure.
TEST_F(Renewal, DamagedNewPairAfterInstallServesThePreviousPairAgain) {
  start_ca();
  const std::string tables = table("empresa", "idse");
  start(tables, "installed");
  const auto before = key("empresa");
  const fs::path old_pem = token_certificate("empresa");
  (void)ctl("renew empresa");  // killed right after the commit
  ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(20))) << daemon->log();
  const auto saved = firma::Json::parse(read_file(rig.dir() / "state" / "state.json"));
  const std::string new_id = saved["renewals"]["empresa"]["newId"];
  ASSERT_FALSE(new_id.empty());
  auto r = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
               " --delete-object --type privkey --id " + new_id);
  ASSERT_EQ(r.exit_code, 0) << r.out;

  start(tables);
  ASSERT_TRUE(eventually([&] { return state("empresa") == "verification-failed"; }, std::chrono::seconds(20)))
      << state("empresa") << "\n" << daemon->log();
  const auto k = key("empresa");
  EXPECT_NE(k["renewal"].value("reason", "").find("damaged"), std::string::npos) << k.dump();
  EXPECT_EQ(k["publicKey"], before["publicKey"]) << "the previous key is served";
  EXPECT_EQ(k["certificate"]["serial"], before["certificate"]["serial"]);
  EXPECT_TRUE(signs_for("empresa", old_pem));
  daemon.reset();
  start(tables);
  EXPECT_EQ(key("empresa")["publicKey"], before["publicKey"]) << "also after a restart";
  EXPECT_TRUE(signs_for("empresa", old_pem));
}

// The CA's answer to the submission (the serial) is recorded before the
// download asks for it: firmad killed while downloading resumes by that
// serial, and the CA is asked for one certificate only.
TEST_F(Renewal, KilledWhileDownloadingResumesWithoutSubmittingAgain) {
  start_ca();
  const std::string tables = table("empresa", "idse");
  start(tables);
  const std::string before = serial("empresa");
  ca->control("fetch:timeout");  // the download hangs
  std::thread renew([&] { (void)ctl("renew empresa", 30); });
  const bool downloading = eventually([&] { return ca->requests().find("GET /idse/instalaRenovacion") != std::string::npos; },
                                      std::chrono::seconds(20));
  ::kill(daemon->pid(), SIGKILL);
  renew.join();
  ASSERT_TRUE(downloading) << ca->requests() << daemon->log();
  ASSERT_TRUE(eventually([&] { return !daemon->running(); }, std::chrono::seconds(10)));
  ca->control("");
  start(tables);
  ASSERT_TRUE(eventually([&] { return state("empresa") == "retired"; }, std::chrono::seconds(30)))
      << state("empresa") << "\n" << daemon->log();
  const std::string requests = ca->requests();
  std::size_t submissions = 0;
  for (std::size_t at = 0; (at = requests.find("POST /idse/solicitudRenovacion", at)) != std::string::npos; ++at) ++submissions;
  EXPECT_EQ(submissions, 1u) << requests;
  EXPECT_NE(serial("empresa"), before);
  EXPECT_TRUE(signs_for("empresa", out / "empresa.pem"));
}

// An IDSE answer firmad cannot read is a named failure that waits for an
// administrator, not 'ca-unreachable' retried without end.
TEST_F(Renewal, UnreadableSerialLookupIsANamedFailure) {
  start_ca();
  start(table("empresa", "idse"));
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();  // the CA now has a certificate for the NPIE
  ca->control("lookup:garbage");
  auto r = ctl(std::string("fetch empresa --npie ") + kNpie);
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_EQ(state("empresa"), "verification-failed") << r.out;
  const auto k = key("empresa");
  EXPECT_NE(k["renewal"].value("reason", "").find("not understood"), std::string::npos) << k.dump();
  EXPECT_FALSE(k["renewal"].contains("nextTry")) << "not retried by itself: " << k.dump();
}

// Temporary files a kill left behind (state.json.XXXXXX, a backup's, a
// certificate file's) are removed when firmad starts; nothing else is.
TEST_F(Renewal, TemporaryFilesOfAnInterruptedWriteAreRemovedAtStart) {
  start_ca();
  const fs::path state = rig.dir() / "state";
  fs::create_directories(state / "backup");
  const std::vector<fs::path> leftovers{state / ".state.json.firmad-Ab3xYz",
                                        state / "backup" / ".empresa-01.pem.firmad-Qq1234",
                                        out / ".empresa.pem.firmad-Zz9999"};
  // An administrator's files that only look alike stay.
  const std::vector<fs::path> kept{state / "state.json.backup", state / "state.json.Ab3xYz", state / "backup" / "empresa-01.pem",
                                   state / "notes.txt", out / "empresa.pem.broken", out / ".empresa.pem.firmad-Zz99"};
  for (const auto& p : leftovers) write_file(p, "half");
  for (const auto& p : kept) write_file(p, "mine");
  start(table("empresa", "idse"));
  for (const auto& p : leftovers) EXPECT_FALSE(fs::exists(p)) << p;
  for (const auto& p : kept) EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_NE(daemon->log().find("event=temporary-file-removed"), std::string::npos) << daemon->log();
}

// A certificate fetched for one key that belongs to another key firmad
// serves is refused, naming the key it is for.
TEST_F(Renewal, FetchOfAnotherKeysCertificateNamesThatKey) {
  start_ca();
  start(table("empresa", "idse") + table("firma-ec", "idse"), "", false,
        {{"uri = \"pkcs11:object=firma-ec", "uri = \"pkcs11:object=firma-ec;id=%02\"\nnpie = \"" + std::string(kNpie) + "\""}});
  ASSERT_EQ(ctl("renew empresa").exit_code, 0) << daemon->log();
  auto issued = run("ls -t " + quote((ca->dir() / "issued").string()) + " | head -1 | sed 's/\\.der$//'");
  const std::string before = serial("firma-ec");
  auto r = ctl("fetch firma-ec --serial " + issued.out.substr(0, issued.out.find('\n')));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("is for key 'empresa'"), std::string::npos) << r.out;
  EXPECT_EQ(serial("firma-ec"), before);
}

// 'renew --abandon' ends a renewal stuck waiting for the CA, removes the new
// key it made, says so, and the next 'renew' starts afresh.
TEST_F(Renewal, AbandonEndsARenewalAndRemovesItsUninstalledKey) {
  start_ca();
  ca->control("fetch:http500");  // issued, but the download keeps failing: the renewal waits
  // No retry of its own during the test (a retry's HTTP 500 would make it
  // ca-unreachable: a second is soon gone on a loaded machine).
  start(table("empresa", "idse", "retry_initial = \"60s\"\nretry_max = \"120s\"\n"));
  auto keys = [&] {
    return run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --login --pin " + TokenRig::kPin +
               " --list-objects --type privkey 2>/dev/null").out;
  };
  EXPECT_EQ(ctl("renew empresa").exit_code, 6);
  ASSERT_EQ(state("empresa"), "waiting");
  ASSERT_NE(keys().find("empresa.renewal"), std::string::npos) << keys();
  auto r = ctl("renew empresa --abandon");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("abandoned by an administrator at waiting"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("removed from the token"), std::string::npos) << r.out;
  EXPECT_EQ(state("empresa"), "underconfigured");
  EXPECT_EQ(keys().find("empresa.renewal"), std::string::npos) << keys();
  EXPECT_TRUE(signs_for("empresa", token_certificate("empresa")));
  // Nothing under way any more: abandoning again says so; renewing starts afresh.
  r = ctl("renew empresa --abandon");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("nothing abandoned"), std::string::npos) << r.out;
  ca->control("");
  r = ctl("renew empresa");
  EXPECT_EQ(r.exit_code, 0) << r.out << daemon->log();
  EXPECT_EQ(state("empresa"), "retired");
}

}  // namespace
}  // namespace firmad::test
