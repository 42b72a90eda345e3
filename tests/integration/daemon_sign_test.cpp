// Signing through a real firmad on a real token, verified by the openssl command.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>
#include <future>
#include <set>

#include "daemon_fixture.hpp"
#include "protocol/base64.hpp"

namespace firmad::test {
namespace {

using SignThroughDaemon = DaemonSuite;

std::string verify_cmd(const std::string& md, const fs::path& pub, const fs::path& sig, const fs::path& data,
                       const std::string& extra = "") {
  return "openssl dgst -" + md + " " + extra + " -verify " + quote(pub.string()) + " -signature " + quote(sig.string()) +
         " " + quote(data.string());
}

TEST_F(SignThroughDaemon, StatusReportsTokenKeysAndCertificates) {
  auto s = client().status();
  ASSERT_EQ(s["tokens"].size(), 1u);
  const auto& t = s["tokens"][0];
  EXPECT_EQ(t["name"], "demo");
  EXPECT_TRUE(t["present"].get<bool>());
  EXPECT_TRUE(t["loggedIn"].get<bool>());
  EXPECT_EQ(t["label"], "firmad-demo");
  EXPECT_EQ(t["loginAttempts"], 1);
  EXPECT_FALSE(t["pinFlags"]["locked"].get<bool>());
  EXPECT_EQ(s["version"], "0.1.0");
  ASSERT_EQ(s["keys"].size(), 4u);
  for (const auto& k : s["keys"]) {
    EXPECT_TRUE(k["found"].get<bool>()) << k.dump();
    EXPECT_TRUE(k.contains("publicKey")) << k.dump();
    if (k["alias"] == "firma-ed") {
      EXPECT_FALSE(k.contains("certificate"));
      continue;
    }
    const auto& c = k["certificate"];
    EXPECT_NE(c["subject"].get<std::string>().find("EMPRESA DEMO SA DE CV"), std::string::npos);
    EXPECT_NE(c["issuer"].get<std::string>().find("firmad Test CA"), std::string::npos);
    EXPECT_FALSE(c["serial"].get<std::string>().empty());
    EXPECT_GE(c["daysLeft"].get<int>(), 363);
    EXPECT_EQ(c["notAfter"].get<std::string>().back(), 'Z');
  }
}

TEST_F(SignThroughDaemon, PublishedPublicKeyIsTheTokensKey) {
  for (const auto& k : client().list_keys()) {
    const std::string id = k["alias"] == "empresa" ? "01" : k["alias"] == "firma-ec" ? "02" : k["alias"] == "firma-ed" ? "03" : "04";
    auto der = protocol::base64_decode(k["publicKey"].get<std::string>());
    ASSERT_TRUE(der);
    write_file(file("published.der"), bytes(*der));
    const auto a = run("openssl pkey -pubin -inform DER -in " + quote(file("published.der").string()));
    const auto b = run("openssl pkey -pubin -in " + quote(rig_->public_key_pem(id).string()));
    EXPECT_EQ(a.out, b.out) << k["alias"];
  }
}

// What a PKCS#11 view of a key needs is in its status: the objects' CKA_ID
// and CKA_LABEL, and the certificate's DER, the very bytes on the token.
TEST_F(SignThroughDaemon, KeysCarryTheirObjectIdLabelAndCertificate) {
  for (const auto& k : client().list_keys()) {
    const std::string alias = k["alias"];
    const std::string id = alias == "empresa" ? "01" : alias == "firma-ec" ? "02" : alias == "firma-ed" ? "03" : "04";
    EXPECT_EQ(k.value("objectId", ""), id) << alias;
    EXPECT_EQ(k.value("objectLabel", ""), alias);
    if (alias == "firma-ed") {
      EXPECT_FALSE(k.contains("certificateDer"));
      continue;
    }
    auto der = protocol::base64_decode(k.value("certificateDer", ""));
    ASSERT_TRUE(der && !der->empty()) << alias;
    const auto on_token = run(std::string("pkcs11-tool --module ") + TokenRig::kModule + " --read-object --type cert --id " + id +
                              " -o " + quote(file("token.der").string()) + " 2>&1");
    ASSERT_EQ(on_token.exit_code, 0) << on_token.out;
    EXPECT_EQ(read_file(file("token.der")), std::string(der->begin(), der->end())) << alias;
  }
}

TEST_F(SignThroughDaemon, RawSignaturesVerifyWithOpenssl) {
  const std::string text = "Aviso de inscripción del trabajador";
  const firma::Bytes data(text.begin(), text.end());
  write_file(file("doc.txt"), text);
  struct Case {
    const char* key;
    const char* id;
    std::string hash;
    bool pss;
  };
  const Case cases[] = {{"empresa", "01", "sha256", false}, {"empresa", "01", "sha384", false},
                        {"empresa", "01", "sha512", false}, {"empresa", "01", "sha256", true},
                        {"empresa", "01", "sha384", true},  {"firma-ec", "02", "sha256", false},
                        {"firma-p384", "04", "sha384", false}, {"firma-ec", "02", "sha512", false}};
  auto c = client();
  for (const auto& tc : cases) {
    const auto sig = c.sign_data(tc.key, data, {tc.hash, tc.pss, std::nullopt});
    write_file(file("doc.sig"), bytes(sig));
    const std::string pss = tc.pss ? "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1" : "";
    auto r = run(verify_cmd(tc.hash, rig_->public_key_pem(tc.id), file("doc.sig"), file("doc.txt"), pss));
    EXPECT_EQ(r.exit_code, 0) << tc.key << " " << tc.hash << " pss=" << tc.pss << ": " << r.out;
    // A different document does not verify: the check can fail.
    write_file(file("other.txt"), text + ".");
    r = run(verify_cmd(tc.hash, rig_->public_key_pem(tc.id), file("doc.sig"), file("other.txt"), pss));
    EXPECT_NE(r.exit_code, 0) << tc.key;
  }
}

TEST_F(SignThroughDaemon, PssSaltLengthIsHonoured) {
  const std::string text = "salt";
  write_file(file("salt.txt"), text);
  const auto sig = client().sign_data("empresa", firma::Bytes(text.begin(), text.end()), {"sha256", true, 20});
  write_file(file("salt.sig"), bytes(sig));
  auto r = run(verify_cmd("sha256", rig_->public_key_pem("01"), file("salt.sig"), file("salt.txt"),
                          "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:20"));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = run(verify_cmd("sha256", rig_->public_key_pem("01"), file("salt.sig"), file("salt.txt"),
                     "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"));
  EXPECT_NE(r.exit_code, 0);
}

TEST_F(SignThroughDaemon, Ed25519SignsTheMessage) {
  const std::string text = "mensaje";
  write_file(file("ed.txt"), text);
  const auto sig = client().sign_message("firma-ed", firma::Bytes(text.begin(), text.end()));
  write_file(file("ed.sig"), bytes(sig));
  const auto r = run("openssl pkeyutl -verify -pubin -inkey " + quote(rig_->public_key_pem("03").string()) +
                     " -rawin -in " + quote(file("ed.txt").string()) + " -sigfile " + quote(file("ed.sig").string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("Signature Verified Successfully"), std::string::npos) << r.out;
}

TEST_F(SignThroughDaemon, CmsAttachedAndDetachedVerifyAgainstTheTestCa) {
  const std::string text(5000, 'x');
  const firma::Bytes data(text.begin(), text.end());
  write_file(file("cms.txt"), text);
  auto c = client();
  for (const char* key : {"empresa", "firma-ec", "firma-p384"}) {
    write_file(file("a.p7s"), bytes(c.sign_cms(key, data)));
    auto r = run("openssl cms -verify -binary -inform DER -in " + quote(file("a.p7s").string()) + " -CAfile " +
                 quote(rig_->ca().string()) + " -out " + quote(file("a.out").string()));
    EXPECT_EQ(r.exit_code, 0) << key << ": " << r.out;
    EXPECT_EQ(read_file(file("a.out")), text);
    r = run("openssl cms -cmsout -print -inform DER -in " + quote(file("a.p7s").string()));
    EXPECT_NE(r.out.find("signingTime"), std::string::npos);
    EXPECT_NE(r.out.find("messageDigest"), std::string::npos);
    EXPECT_NE(r.out.find("EMPRESA DEMO SA DE CV"), std::string::npos) << "signer certificate embedded";

    write_file(file("d.p7s"), bytes(c.sign_cms_detached(key, firma::digest("sha256", data))));
    r = run("openssl cms -verify -binary -inform DER -in " + quote(file("d.p7s").string()) + " -content " +
            quote(file("cms.txt").string()) + " -CAfile " + quote(rig_->ca().string()) + " -out /dev/null");
    EXPECT_EQ(r.exit_code, 0) << key << ": " << r.out;
    write_file(file("cms-other.txt"), text + "y");
    r = run("openssl cms -verify -binary -inform DER -in " + quote(file("d.p7s").string()) + " -content " +
            quote(file("cms-other.txt").string()) + " -CAfile " + quote(rig_->ca().string()) + " -out /dev/null");
    EXPECT_NE(r.exit_code, 0) << "detached CMS must not verify other content";
  }
}

TEST_F(SignThroughDaemon, CmsWithSha384) {
  const std::string text = "sha384 content";
  write_file(file("c384.txt"), text);
  write_file(file("c384.p7s"), bytes(client().sign_cms("firma-p384", firma::Bytes(text.begin(), text.end()), "sha384")));
  auto r = run("openssl cms -verify -binary -inform DER -in " + quote(file("c384.p7s").string()) + " -CAfile " +
               quote(rig_->ca().string()) + " -out /dev/null && openssl cms -cmsout -print -inform DER -in " +
               quote(file("c384.p7s").string()) + " | grep -c sha384");
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

TEST_F(SignThroughDaemon, CmsNeedsACertificate) {
  try {
    client().sign_cms("firma-ed", firma::Bytes{1, 2, 3});
    FAIL();
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.CertificateMissing");
  }
}

TEST_F(SignThroughDaemon, FirmactlSignsFilesInEveryFormat) {
  const std::string text = "documento firmado con firmactl";
  write_file(file("ctl.txt"), text);
  auto r = ctl("sign empresa " + quote(file("ctl.txt").string()) + " -o " + quote(file("ctl.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run(verify_cmd("sha256", rig_->public_key_pem("01"), file("ctl.sig"), file("ctl.txt")));
  EXPECT_EQ(r.exit_code, 0) << r.out;

  r = ctl("sign firma-ec --format base64 - ", text);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto sig = protocol::base64_decode(r.out.substr(0, r.out.find('\n')));
  ASSERT_TRUE(sig) << r.out;
  write_file(file("ctl-ec.sig"), bytes(*sig));
  r = run(verify_cmd("sha256", rig_->public_key_pem("02"), file("ctl-ec.sig"), file("ctl.txt")));
  EXPECT_EQ(r.exit_code, 0) << r.out;

  r = ctl("sign firma-ec --cms --format pem " + quote(file("ctl.txt").string()) + " -o " + quote(file("ctl.pem").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl cms -verify -binary -inform PEM -in " + quote(file("ctl.pem").string()) + " -CAfile " +
          quote(rig_->ca().string()) + " -out /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.out;

  r = ctl("sign empresa --cms --detached " + quote(file("ctl.txt").string()) + " -o " + quote(file("ctl.p7s").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl cms -verify -binary -inform DER -in " + quote(file("ctl.p7s").string()) + " -content " +
          quote(file("ctl.txt").string()) + " -CAfile " + quote(rig_->ca().string()) + " -out /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.out;
}

// -o writes into what the target is: a device or FIFO is written, never
// replaced (firmactl once renamed a regular file over /dev/null); a regular
// file is replaced atomically, keeping its mode; a link keeps being a link.
TEST_F(SignThroughDaemon, FirmactlWritesIntoWhatTheTargetIs) {
  const std::string text = "salida de firmactl";
  write_file(file("out.txt"), text);
  const std::string sign = "sign empresa " + quote(file("out.txt").string()) + " -o ";
  auto verifies = [&](const fs::path& sig) {
    return run(verify_cmd("sha256", rig_->public_key_pem("01"), sig, file("out.txt"))).exit_code == 0;
  };

  // A character device: a node of its own (1,3 = null) first, so a failure
  // here cannot break the machine's /dev/null; then /dev/null itself.
  const fs::path null_node = file("null-node");
  fs::remove(null_node);
  ASSERT_EQ(::mknod(null_node.c_str(), S_IFCHR | 0666, ::makedev(1, 3)), 0) << std::strerror(errno);
  for (const fs::path& device : {null_node, fs::path("/dev/null")}) {
    auto r = ctl(sign + quote(device.string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    struct stat st{};
    ASSERT_EQ(::stat(device.c_str(), &st), 0);
    ASSERT_TRUE(S_ISCHR(st.st_mode)) << device << " is no longer a character device";
    EXPECT_EQ(st.st_rdev, ::makedev(1, 3));
  }

  // A FIFO: written through, read whole by the other end.
  const fs::path fifo = file("out.fifo");
  fs::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto reader = std::async(std::launch::async, [&] { return run("cat " + quote(fifo.string()) + " > " + quote(file("from-fifo.sig").string())); });
  auto r = ctl(sign + quote(fifo.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  ASSERT_EQ(reader.get().exit_code, 0);
  struct stat st{};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_TRUE(verifies(file("from-fifo.sig")));

  // /dev/stdout, redirected by the shell to a file.
  r = run(quote(firmactl_binary().string()) + " --socket " + quote(rig_->socket().string()) + " " + sign +
          "/dev/stdout > " + quote(file("stdout.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(verifies(file("stdout.sig")));
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
  // ... appended to (never truncated), and into a pipe.
  write_file(file("log.sig"), "head\n", 0644);
  r = run(quote(firmactl_binary().string()) + " --socket " + quote(rig_->socket().string()) + " " + sign +
          "/dev/stdout >> " + quote(file("log.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string appended = read_file(file("log.sig"));
  ASSERT_EQ(appended.rfind("head\n", 0), 0u) << "the shell's >> target was truncated";
  write_file(file("tail.sig"), appended.substr(5));
  EXPECT_TRUE(verifies(file("tail.sig")));
  r = run(quote(firmactl_binary().string()) + " --socket " + quote(rig_->socket().string()) + " " + sign +
          "/dev/stdout | cat > " + quote(file("piped.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(verifies(file("piped.sig")));

  // A regular file: replaced whole, its mode kept, no temporary left behind.
  write_file(file("kept.sig"), "old", 0640);
  r = ctl(sign + quote(file("kept.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(verifies(file("kept.sig")));
  EXPECT_EQ(fs::status(file("kept.sig")).permissions() & fs::perms::all, fs::perms(0640));
  for (const auto& entry : fs::directory_iterator(rig_->dir()))
    EXPECT_EQ(entry.path().filename().string().rfind(".firmactl-", 0), std::string::npos) << entry.path();

  // A symbolic link to a regular file: the file gets the signature, the link stays.
  fs::remove(file("link.sig"));
  fs::create_symlink(file("kept.sig"), file("link.sig"));
  write_file(file("kept.sig"), "old", 0640);
  r = ctl(sign + quote(file("link.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(fs::is_symlink(file("link.sig")));
  EXPECT_TRUE(verifies(file("kept.sig")));

  // A directory is refused, and a directory that does not exist names the path.
  r = ctl(sign + quote(rig_->dir().string()));
  EXPECT_EQ(r.exit_code, 5) << r.out;
  EXPECT_NE(r.out.find("it is a directory"), std::string::npos) << r.out;
  r = ctl(sign + "/nonexistent/dir/x.sig");
  EXPECT_EQ(r.exit_code, 5) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/dir"), std::string::npos) << r.out;
}

// A listening Unix socket that never answers, at `path` with `mode`.
int silent_listener(const fs::path& path, mode_t mode) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 8) != 0 ||
      ::chmod(path.c_str(), mode) != 0)
    ADD_FAILURE() << "cannot listen on " << path << ": " << std::strerror(errno);
  return fd;
}

// A user who may not connect is told which permission is missing and where;
// a firmad that accepts but never answers (socket activation of a unit that
// cannot start) ends in firmactl's timeout, not in a wait forever.
TEST(Firmactl, NamesTheMissingPermissionAndNeverWaitsForever) {
  char tmpl[] = "/tmp/firmactl-perm-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  ::chmod(dir.c_str(), 0711);
  fs::create_directory(dir / "closed");
  ::chmod((dir / "closed").c_str(), 0700);
  const int closed = silent_listener(dir / "closed" / "s.sock", 0666);
  const int gated = silent_listener(dir / "gated.sock", 0660);  // root:root
  const int open = silent_listener(dir / "open.sock", 0666);
  const std::string as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups " + quote(firmactl_binary().string());

  // Refused at the socket: exit 4, access denied (firmactl(1)).
  auto r = run(as_nobody + " --socket " + quote((dir / "closed" / "s.sock").string()) + " status");
  EXPECT_EQ(r.exit_code, 4) << r.out;
  EXPECT_NE(r.out.find("the directory " + (dir / "closed").string() + " (mode 0700, root:root) may not be searched by uid 65534 (nobody)"),
            std::string::npos) << r.out;

  r = run(as_nobody + " --socket " + quote((dir / "gated.sock").string()) + " status");
  EXPECT_EQ(r.exit_code, 4) << r.out;
  EXPECT_NE(r.out.find("the socket (mode 0660, root:root) may be used by members of group root, and uid 65534 (nobody) is not one"),
            std::string::npos) << r.out;

  const auto start = std::chrono::steady_clock::now();
  r = run(as_nobody + " --timeout 1 --socket " + quote((dir / "open.sock").string()) + " status", 30);
  EXPECT_EQ(r.exit_code, 3) << r.out;  // unreachable
  EXPECT_NE(r.out.find("firmad did not answer within 1000 ms (did firmad fail to start"), std::string::npos) << r.out;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));  // not the run() limit

  for (int fd : {closed, gated, open}) ::close(fd);
  fs::remove_all(dir);
}

// Status and ListKeys show a non-administrator only the keys it may sign
// with and their tokens; an administrator sees everything.
TEST(StatusPrivacy, NonAdminsSeeOnlyTheKeysTheyMayUse) {
  TokenRig rig;
  const auto daemon = start_with_shared_key(rig);
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();
  auto as = [&](uid_t uid, const std::string& command) {
    const auto r = run("setpriv --reuid=" + std::to_string(uid) + " --regid=65534 --clear-groups " +
                       quote(firmactl_binary().string()) + " --json --socket " + quote(rig.socket().string()) + " " + command);
    EXPECT_EQ(r.exit_code, 0) << r.out;
    return firma::Json::parse(r.out);
  };
  auto aliases = [](const firma::Json& keys) {
    std::set<std::string> out;
    for (const auto& k : keys) out.insert(k.at("alias").get<std::string>());
    return out;
  };

  // Root administers: every key and token, and the server's own state.
  auto status = as(0, "status");
  EXPECT_EQ(aliases(status["keys"]), (std::set<std::string>{"compartida", "empresa", "firma-ec", "firma-ed", "firma-p384"}));
  EXPECT_EQ(status["tokens"].size(), 1u);
  EXPECT_TRUE(status.contains("audit"));

  // A uid on one key's allow list: that key and its token, nothing else.
  status = as(65532, "status");
  EXPECT_EQ(aliases(status["keys"]), (std::set<std::string>{"compartida"}));
  ASSERT_EQ(status["tokens"].size(), 1u);
  EXPECT_EQ(status["tokens"][0]["name"], "demo");
  EXPECT_FALSE(status.contains("audit"));
  EXPECT_FALSE(status.contains("heldBack"));
  EXPECT_EQ(aliases(as(65532, "keys")), (std::set<std::string>{"compartida"}));
  const std::string seen = status.dump();
  EXPECT_EQ(seen.find("empresa"), std::string::npos) << seen;  // nor its holder, RFC, CURP...

  // A uid on no allow list: nothing.
  status = as(65531, "status");
  EXPECT_TRUE(status["keys"].empty()) << status.dump();
  EXPECT_TRUE(status["tokens"].empty()) << status.dump();
  EXPECT_TRUE(as(65531, "keys").empty());
}

TEST_F(SignThroughDaemon, FirmactlExitCodesAndMessages) {
  auto r = ctl("sign nosuchkey -", "x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("no key 'nosuchkey'"), std::string::npos) << r.out;
  r = ctl("sign empresa /nonexistent/file");
  EXPECT_EQ(r.exit_code, 5) << r.out;
  r = ctl("sign empresa --detached -", "x");
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = ctl("frobnicate");
  EXPECT_EQ(r.exit_code, 2) << r.out;
  r = run(quote(firmactl_binary().string()) + " --socket " + quote((rig_->dir() / "nope.sock").string()) + " status");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.out.find("is firmad running?"), std::string::npos) << r.out;
  r = ctl("--json keys");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(firma::Json::parse(r.out).size(), 4u);
  r = ctl("status");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("token demo: logged-in"), std::string::npos) << r.out;
  r = ctl("status --json");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(firma::Json::parse(r.out)["tokens"][0]["name"], "demo");
  r = ctl("sign firma-ec - --json", "json please");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(protocol::base64_decode(firma::Json::parse(r.out)["signature"].get<std::string>()));
  r = ctl("--json sign nosuchkey -", "x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("\"error\":\"io.firmad.Signer.KeyNotFound\""), std::string::npos) << r.out;
}

TEST_F(SignThroughDaemon, CExampleProgramSignsThroughLibfirma) {
  const std::string text = "from C";
  write_file(file("c.txt"), text);
  const auto r = run("FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " " + quote(FIRMA_EXAMPLE_BINARY) +
                     " empresa " + quote(file("c.txt").string()) + " " + quote(file("c.sig").string()) + " " +
                     quote(file("c.p7s").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto v = run(verify_cmd("sha256", rig_->public_key_pem("01"), file("c.sig"), file("c.txt")));
  EXPECT_EQ(v.exit_code, 0) << v.out;
  v = run("openssl cms -verify -binary -inform DER -in " + quote(file("c.p7s").string()) + " -CAfile " +
          quote(rig_->ca().string()) + " -out /dev/null");
  EXPECT_EQ(v.exit_code, 0) << v.out;
  const auto bad = run("FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " " + quote(FIRMA_EXAMPLE_BINARY) +
                       " nosuchkey " + quote(file("c.txt").string()) + " " + quote(file("c2.sig").string()));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.out.find("io.firmad.Signer.KeyNotFound"), std::string::npos) << bad.out;
}

TEST_F(SignThroughDaemon, EverySignatureLeavesAnAuditLine) {
  const std::string text = "auditado";
  ASSERT_EQ(ctl("sign firma-ec -o " + quote(file("audit.sig").string()) + " -", text).exit_code, 0);
  const std::string digest_hex = [&] {
    auto d = firma::digest("sha256", firma::Bytes(text.begin(), text.end()));
    std::string h;
    for (auto b : d) h += "0123456789abcdef"[b >> 4], h += "0123456789abcdef"[b & 15];
    return h;
  }();
  // The record is in the audit file (daemon.audit_file), written by its own thread.
  std::string audit;
  ASSERT_TRUE(eventually([&] { return (audit = read_file(rig_->audit_log())).find("digest=" + digest_hex) != std::string::npos; }))
      << audit << daemon_->log();
  const auto at = audit.rfind("\n", audit.find("digest=" + digest_hex)) + 1;
  const std::string line = audit.substr(at, audit.find('\n', at) - at);
  // firmad runs as another uid (kDaemonUid): root's /proc/PID/exe is closed
  // to it, so the record names the program by its comm, and says nothing else.
  for (const std::string& part : std::vector<std::string>{"time=", " event=sign ", "method=Sign", "key=firma-ec", "scheme=ecdsa", "uid=0", "gid=0", "pid=",
                                 " comm=firmactl ", "result=ok"})
    EXPECT_NE(line.find(part), std::string::npos) << part << " not in: " << line;
  EXPECT_EQ(line.find("exe="), std::string::npos) << line;
  EXPECT_EQ(line.find("?"), std::string::npos) << "no placeholder: " << line;

  // A client of firmad's own uid and gid: the kernel lets firmad read its
  // executable, so the record names it (a refusal is audited like a signature).
  // Another uid: its comm.
  auto as = [&](uid_t uid) {
    return run("setpriv --reuid=" + std::to_string(uid) + " --regid=" + std::to_string(uid == kDaemonUid ? kDaemonUid : 65534) +
               " --clear-groups " + quote(firmactl_binary().string()) +
               " --socket " + quote(rig_->socket().string()) + " sign firma-ec -o /dev/null " + quote(file("out.txt").string()));
  };
  write_file(file("out.txt"), text, 0644);
  for (const uid_t uid : {kDaemonUid, uid_t{65533}}) {
    auto r = as(uid);
    EXPECT_EQ(r.exit_code, 4) << r.out;  // AccessDenied: not in the key's allow_users
    const std::string who = " uid=" + std::to_string(uid) + " gid=" + std::to_string(uid == kDaemonUid ? kDaemonUid : 65534) + " pid=";
    ASSERT_TRUE(eventually([&] { return (audit = read_file(rig_->audit_log())).find(who) != std::string::npos; })) << audit;
    const auto from = audit.rfind("\n", audit.find(who)) + 1;
    const std::string record = audit.substr(from, audit.find('\n', from) - from);
    EXPECT_NE(record.find(" result=AccessDenied"), std::string::npos) << record;
    if (uid == kDaemonUid) EXPECT_NE(record.find(" exe=" + firmactl_binary().string() + " "), std::string::npos) << record;
    else EXPECT_NE(record.find(" comm=firmactl "), std::string::npos) << record;
  }
  EXPECT_EQ(audit.find(TokenRig::kPin), std::string::npos) << "no PIN in the audit trail";
  EXPECT_EQ(daemon_->log().find(TokenRig::kPin), std::string::npos) << "no PIN in the log";
  EXPECT_EQ(daemon_->log().find("digest=" + digest_hex), std::string::npos) << "signatures go to the audit trail, not the journal";
}

TEST_F(SignThroughDaemon, VarlinkServiceInterfaceWorks) {
  auto c = client();
  auto info = c.call("org.varlink.service.GetInfo");
  EXPECT_EQ(info["product"], "firmad");
  EXPECT_EQ(info["interfaces"], firma::Json::array({"org.varlink.service", "io.firmad.Signer"}));
  auto d = c.call("org.varlink.service.GetInterfaceDescription", {{"interface", "io.firmad.Signer"}});
  const std::string text = d["description"];
  EXPECT_EQ(text.find("interface io.firmad.Signer"), text.find("interface "));
  for (const char* m : {"method Status", "method ListKeys", "method Sign(", "method SignCms(", "method Login(",
                        "method Logout(", "error QueueFull", "error AccessDenied"})
    EXPECT_NE(text.find(m), std::string::npos) << m;
  try {
    c.call("org.varlink.service.GetInterfaceDescription", {{"interface", "com.example.Nope"}});
    FAIL();
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "org.varlink.service.InterfaceNotFound");
  }
}

TEST_F(SignThroughDaemon, PipelinedCallsAreAnsweredInOrder) {
  RawConnection raw(rig_->socket());
  std::string calls;
  for (int i = 0; i < 5; ++i)
    calls += std::string(R"({"method":"io.firmad.Signer.ListKeys"})") + '\0' + R"({"method":"org.varlink.service.GetInfo"})" + '\0';
  ASSERT_TRUE(raw.send(calls));
  for (int i = 0; i < 5; ++i) {
    auto a = raw.read_frame();
    auto b = raw.read_frame();
    ASSERT_TRUE(a && b);
    EXPECT_NE(a->find("\"keys\""), std::string::npos);
    EXPECT_NE(b->find("\"interfaces\""), std::string::npos);
  }
}

TEST_F(SignThroughDaemon, OnewayCallsGetNoReply) {
  RawConnection raw(rig_->socket());
  ASSERT_TRUE(raw.send(std::string(R"({"method":"io.firmad.Signer.Status","oneway":true})") + '\0' +
                       R"({"method":"org.varlink.service.GetInfo"})" + '\0'));
  auto reply = raw.read_frame();
  ASSERT_TRUE(reply);
  EXPECT_NE(reply->find("\"interfaces\""), std::string::npos) << "the first reply is GetInfo's: Status was oneway";
}

}  // namespace
}  // namespace firmad::test

namespace firmad::test {
namespace {

// SHA-1 is signed only for keys whose configuration allows it (allow_sha1):
// here empresa (RSA) does, firma-ec does not (issue 14, item 5).
class Sha1OptIn : public DaemonSuite {
 protected:
  static void SetUpTestSuite() {
    start({{"uri = \"pkcs11:object=empresa;id=%01\"", "uri = \"pkcs11:object=empresa;id=%01\"\nallow_sha1 = true"}});
  }
};

TEST_F(Sha1OptIn, OnlyKeysThatAllowItSignSha1) {
  write_file(file("sat.xml"), "<SignedInfo>descarga masiva</SignedInfo>");
  auto r = ctl("sign empresa " + quote(file("sat.xml").string()) + " --hash sha1 -o " + quote(file("sat.sig").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl dgst -sha1 -verify " + quote(rig_->public_key_pem("01").string()) + " -signature " + quote(file("sat.sig").string()) +
          " " + quote(file("sat.xml").string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  // RSA-PSS over SHA-1 (MGF1-SHA1) as well.
  firma::SignOptions pss;
  pss.hash = "sha1", pss.pss = true;
  const std::string text = "pss sha1";
  write_file(file("p.txt"), text);
  write_file(file("p.sig"), bytes(client().sign_data("empresa", firma::Bytes(text.begin(), text.end()), pss)));
  r = run("openssl dgst -sha1 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:20 -verify " +
          quote(rig_->public_key_pem("01").string()) + " -signature " + quote(file("p.sig").string()) + " " + quote(file("p.txt").string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // A key without the opt-in: a named refusal, through libfirma and firmactl.
  try {
    firma::SignOptions sha1;
    sha1.hash = "sha1";
    client().sign_data("firma-ec", firma::Bytes{1, 2, 3}, sha1);
    ADD_FAILURE() << "firma-ec signed SHA-1";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.HashNotAllowed");
    EXPECT_EQ(e.parameters()["key"], "firma-ec");
    EXPECT_EQ(e.parameters()["hash"], "sha1");
  }
  r = ctl("sign firma-ec " + quote(file("sat.xml").string()) + " --hash sha1 -o " + quote(file("ec.sig").string()));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("allow_sha1 = true"), std::string::npos) << r.out;
  // SignCms too.
  try {
    client().sign_cms("firma-ec", firma::Bytes{1}, "sha1");
    ADD_FAILURE() << "firma-ec made a SHA-1 CMS";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.HashNotAllowed");
  }
  const auto cms = client().sign_cms("empresa", firma::Bytes(text.begin(), text.end()), "sha1");
  write_file(file("c.der"), bytes(cms));
  r = run("openssl cms -verify -inform DER -in " + quote(file("c.der").string()) + " -CAfile " + quote(rig_->ca().string()) +
          " -purpose any -cmsout -print | grep -c 'algorithm: sha1'");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  // The audit trail names the hash of each signature.
  const std::string audit = read_file(rig_->audit_log());
  EXPECT_NE(audit.find("key=empresa scheme=rsa-pkcs1 hash=sha1 digest="), std::string::npos) << audit;
  EXPECT_NE(audit.find("method=SignCms key=empresa scheme=rsa-pkcs1 hash=sha1"), std::string::npos) << audit;
}

}  // namespace
}  // namespace firmad::test
