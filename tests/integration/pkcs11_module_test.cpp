// libfirma-pkcs11.so driven by real PKCS#11 programs (OpenSC's pkcs11-tool,
// OpenSSH's ssh-keygen) against a real firmad on SoftHSM; every signature
// verified by OpenSSL against the key read straight from the token.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "client/firma.hpp"
#include "daemon_fixture.hpp"
#include "rig.hpp"

namespace firmad::test {
namespace {

std::string module() { return FIRMA_PKCS11_MODULE; }

// pkcs11-tool on the module, as `who` (a setpriv prefix, or empty for root).
CommandResult tool(const fs::path& socket, const std::string& args, const std::string& who = "") {
  return run("FIRMAD_SOCKET=" + quote(socket.string()) + " " + who + " pkcs11-tool --module " + quote(module()) + " " + args);
}

std::string as_uid(uid_t uid) {
  return "setpriv --reuid=" + std::to_string(uid) + " --regid=65534 --clear-groups";
}

// The lowercase hex of `data`, as the audit trail writes digests.
std::string hex_of(const firma::Bytes& data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (auto b : data) out += std::string{kDigits[b >> 4], kDigits[b & 15]};
  return out;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class Pkcs11Module : public DaemonSuite {
 protected:
  static CommandResult p11(const std::string& args) { return tool(rig_->socket(), args); }

  // Signs `data.txt` (or `input`) with pkcs11-tool and returns the signature file.
  static fs::path sign(const std::string& args, const fs::path& input, const std::string& name) {
    const fs::path out = file(name);
    fs::remove(out);
    const auto r = p11("--sign " + args + " -i " + quote(input.string()) + " -o " + quote(out.string()));
    EXPECT_EQ(r.exit_code, 0) << args << ": " << r.out;
    return out;
  }

  static CommandResult verify(const std::string& md, const std::string& id, const fs::path& sig, const fs::path& data,
                              const std::string& extra = "") {
    return run("openssl dgst -" + md + " " + extra + " -verify " + quote(rig_->public_key_pem(id).string()) + " -signature " +
               quote(sig.string()) + " " + quote(data.string()));
  }

  static fs::path data_file() {
    write_file(file("data.txt"), "nómina de diciembre\n");
    return file("data.txt");
  }

  static fs::path digest_file(const std::string& hash, const std::string& name, const firma::Bytes& prefix = {}) {
    const std::string text = read_file(data_file());
    auto d = firma::digest(hash, firma::Bytes(text.begin(), text.end()));
    d.insert(d.begin(), prefix.begin(), prefix.end());
    write_file(file(name), bytes(d));
    return file(name);
  }
};

TEST_F(Pkcs11Module, ExportsOnlyThePkcs11EntryPoints) {
  const auto r = run("nm -D --defined-only " + quote(module()) + " | awk '{print $3}' | sort");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out, "C_GetFunctionList\nC_GetInterface\nC_GetInterfaceList\n");
}

TEST_F(Pkcs11Module, ListsOneSlotPerTokenWithEdDsaKeysApartAndNoLogin) {
  const auto r = p11("-L");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Slot "), 2u) << r.out;
  EXPECT_NE(r.out.find("firmad token demo"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("firmad token demo (EdDSA keys)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token label        : firmad-demo\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token label        : firmad-demo EdDSA"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("login required"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("readonly"), std::string::npos) << r.out;
}

TEST_F(Pkcs11Module, MechanismsAreThoseOfTheSlotsKeys) {
  auto r = p11("-M");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* m : {"RSA-PKCS,", "SHA256-RSA-PKCS,", "RSA-PKCS-PSS,", "SHA512-RSA-PKCS-PSS,", "ECDSA,", "ECDSA-SHA384,"})
    EXPECT_NE(r.out.find(m), std::string::npos) << m << "\n" << r.out;
  EXPECT_EQ(r.out.find("EDDSA"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("RSA-X-509"), std::string::npos) << r.out;
  r = p11("--slot-index 1 -M");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("EDDSA"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("RSA"), std::string::npos) << r.out;
}

// The private key, public key and certificate of each key, with the token's
// CKA_ID and CKA_LABEL; what is read through the module is the token's bytes.
TEST_F(Pkcs11Module, ObjectsMirrorTheTokensKeysAndCertificates) {
  auto r = p11("-O");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Private Key Object"), 3u) << r.out;
  EXPECT_EQ(count(r.out, "Public Key Object"), 3u) << r.out;
  EXPECT_EQ(count(r.out, "Certificate Object"), 3u) << r.out;
  for (const char* label : {"label:      empresa", "label:      firma-ec", "label:      firma-p384"})
    EXPECT_EQ(count(r.out, label), 3u) << label << "\n" << r.out;
  EXPECT_NE(r.out.find("Access:     sensitive, always sensitive, never extractable"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Allowed mechanisms: RSA-PKCS,SHA256-RSA-PKCS,SHA384-RSA-PKCS,SHA512-RSA-PKCS,RSA-PKCS-PSS,"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("Allowed mechanisms: ECDSA,ECDSA-SHA256,ECDSA-SHA384,ECDSA-SHA512\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("RSA-X-509"), std::string::npos) << r.out;
  r = p11("--slot-index 1 -O");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Private Key Object; EC_EDWARDS"), 1u) << r.out;
  EXPECT_EQ(count(r.out, "Public Key Object; EC_EDWARDS"), 1u) << r.out;
  EXPECT_NE(r.out.find("ID:         03"), std::string::npos) << r.out;

  for (const std::string id : {"01", "02"}) {
    // The certificate's DER, as SoftHSM holds it.
    const fs::path through = file("through-" + id + ".der"), direct = file("direct-" + id + ".der");
    r = p11("--read-object --type cert --id " + id + " -o " + quote(through.string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run("pkcs11-tool --module " + std::string(TokenRig::kModule) + " --read-object --type cert --id " + id + " -o " +
            quote(direct.string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(read_file(through), read_file(direct)) << id;
    // The public key (pkcs11-tool builds it from CKA_MODULUS/EXPONENT or CKA_EC_PARAMS/POINT).
    r = p11("--read-object --type pubkey --id " + id + " -o " + quote(file("pub-" + id + ".der").string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run("openssl pkey -pubin -inform DER -in " + quote(file("pub-" + id + ".der").string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(r.out, read_file(rig_->public_key_pem(id))) << id;
  }
}

TEST_F(Pkcs11Module, RsaSignaturesOfEachMechanismVerify) {
  const fs::path data = data_file();
  auto sig = sign("-m SHA256-RSA-PKCS --id 01", data, "rsa-sha256.sig");
  auto r = verify("sha256", "01", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  sig = sign("-m SHA512-RSA-PKCS --id 01", data, "rsa-sha512.sig");
  r = verify("sha512", "01", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // CKM_RSA_PKCS over a SHA-256 DigestInfo.
  const firma::Bytes sha256_info{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
  sig = sign("-m RSA-PKCS --id 01", digest_file("sha256", "digest-info.bin", sha256_info), "rsa-pkcs.sig");
  r = verify("sha256", "01", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;

  const std::string pss = "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1";
  sig = sign("-m RSA-PKCS-PSS --mgf MGF1-SHA256 --hash-algorithm SHA256 --id 01", digest_file("sha256", "d256.bin"), "pss.sig");
  r = verify("sha256", "01", sig, data, pss);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  sig = sign("-m SHA384-RSA-PKCS-PSS --mgf MGF1-SHA384 --id 01", data, "pss384.sig");
  r = verify("sha384", "01", sig, data, pss);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  // A signature verifies only over its own data.
  write_file(file("other.txt"), "otra nómina\n");
  r = verify("sha384", "01", sig, file("other.txt"), pss);
  EXPECT_NE(r.exit_code, 0) << r.out;
}

TEST_F(Pkcs11Module, RsaRefusesRawDataAndMismatchedPssParameters) {
  // Not a DigestInfo (the MD5+SHA-1 of TLS 1.0 is 36 bytes like this): never raw RSA.
  write_file(file("raw36.bin"), std::string(36, 'x'));
  auto r = p11("--sign -m RSA-PKCS --id 01 -i " + quote(file("raw36.bin").string()) + " -o " + quote(file("raw.sig").string()));
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("CKR_DATA_INVALID"), std::string::npos) << r.out;
  // firmad's RSA-PSS uses MGF1 with the signature's hash.
  r = p11("--sign -m SHA256-RSA-PKCS-PSS --mgf MGF1-SHA512 --id 01 -i " + quote(data_file().string()) +
          " -o " + quote(file("bad-pss.sig").string()));
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("CKR_MECHANISM_PARAM_INVALID"), std::string::npos) << r.out;
  r = p11("--sign -m RSA-X-509 --id 01 -i " + quote(file("raw36.bin").string()) + " -o " + quote(file("x509.sig").string()));
  EXPECT_NE(r.exit_code, 0) << r.out;
}

TEST_F(Pkcs11Module, EcdsaAndEdDsaSignaturesVerify) {
  const fs::path data = data_file();
  // CKM_ECDSA returns r||s; pkcs11-tool turns it into DER for openssl.
  auto sig = sign("-m ECDSA --id 02 --signature-format openssl", digest_file("sha256", "d256.bin"), "ec.sig");
  auto r = verify("sha256", "02", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(fs::file_size(sign("-m ECDSA --id 02", file("d256.bin"), "ec-raw.sig")), 64u);
  sig = sign("-m ECDSA --id 04 --signature-format openssl", digest_file("sha384", "d384.bin"), "p384.sig");
  r = verify("sha384", "04", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  sig = sign("-m ECDSA-SHA256 --id 02 --signature-format openssl", data, "ec-sha256.sig");
  r = verify("sha256", "02", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  sig = sign("-m ECDSA-SHA512 --id 04 --signature-format openssl", data, "p384-sha512.sig");
  r = verify("sha512", "04", sig, data);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = verify("sha512", "04", sig, file("d384.bin"));
  EXPECT_NE(r.exit_code, 0) << r.out;

  sig = sign("--slot-index 1 -m EDDSA --id 03", data, "ed.sig");
  r = run("openssl pkeyutl -verify -pubin -inkey " + quote(rig_->public_key_pem("03").string()) + " -rawin -in " +
          quote(data.string()) + " -sigfile " + quote(sig.string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("Signature Verified Successfully"), std::string::npos) << r.out;
}

// OpenSC's pkcs11-spy between a program and the module: the calls it made.
constexpr const char* kSpy = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

// Large input goes through C_SignUpdate/C_SignFinal, hashed in the program:
// firmad receives (and audits) only the digest.
TEST_F(Pkcs11Module, MultiPartSigningHashesLocally) {
  std::string big(200000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  write_file(file("big.bin"), big);
  const fs::path spy = file("spy.log"), sig = file("big.sig");
  for (const auto& [mech, md, id, extra] : {std::tuple<std::string, std::string, std::string, std::string>{
                                               "ECDSA-SHA384 --signature-format openssl", "sha384", "04", ""},
                                           {"SHA512-RSA-PKCS-PSS --mgf MGF1-SHA512", "sha512", "01",
                                            "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1"}}) {
    fs::remove(spy);
    fs::remove(sig);
    auto r = run("PKCS11SPY=" + quote(module()) + " PKCS11SPY_OUTPUT=" + quote(spy.string()) + " FIRMAD_SOCKET=" +
                 quote(rig_->socket().string()) + " pkcs11-tool --module " + kSpy + " --sign -m " + mech + " --id " + id +
                 " -i " + quote(file("big.bin").string()) + " -o " + quote(sig.string()));
    ASSERT_EQ(r.exit_code, 0) << r.out;
    const std::string trace = read_file(spy);
    EXPECT_GT(count(trace, ": C_SignUpdate"), 1u) << mech;
    EXPECT_EQ(count(trace, ": C_SignFinal"), 1u) << mech;
    r = verify(md, id, sig, file("big.bin"), extra);
    EXPECT_EQ(r.exit_code, 0) << mech << ": " << r.out;
    const std::string digest_hex = hex_of(firma::digest(md, firma::Bytes(big.begin(), big.end())));
    EXPECT_TRUE(eventually([&] { return read_file(rig_->audit_log()).find("digest=" + digest_hex) != std::string::npos; }))
        << mech << ": " << read_file(rig_->audit_log());
  }
}

// GnuTLS's p11tool asks C_Sign for the length with a NULL buffer first: that
// makes no signature, so each test-sign leaves exactly one audit record.
TEST_F(Pkcs11Module, LengthQueryMakesNoSignature) {
  const fs::path spy = file("spy-len.log");
  for (const std::string key : {"empresa", "firma-ec"}) {
    fs::remove(spy);
    const auto before = count(read_file(rig_->audit_log()), "event=sign ");
    auto r = run("PKCS11SPY=" + quote(module()) + " PKCS11SPY_OUTPUT=" + quote(spy.string()) + " FIRMAD_SOCKET=" +
                 quote(rig_->socket().string()) + " p11tool --provider " + kSpy + " --test-sign 'pkcs11:object=" + key +
                 ";type=private'");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_NE(r.out.find("Verifying against public key in the token... ok"), std::string::npos) << r.out;
    const std::string trace = read_file(spy);
    EXPECT_EQ(count(trace, ": C_Sign\n"), 2u) << trace;
    EXPECT_NE(trace.find("pSignature[*pulSignatureLen] NULL"), std::string::npos) << trace;
    // The audit writer is asynchronous but keeps order: once a marker
    // signature made after p11tool is on record, p11tool's are all there.
    const std::string marker = "after p11tool " + key;
    firma::Client(rig_->socket().string()).sign_data("firma-ec", firma::Bytes(marker.begin(), marker.end()));
    const std::string marker_hex = hex_of(firma::digest("sha256", firma::Bytes(marker.begin(), marker.end())));
    ASSERT_TRUE(eventually([&] { return read_file(rig_->audit_log()).find("digest=" + marker_hex) != std::string::npos; }))
        << read_file(rig_->audit_log());
    EXPECT_EQ(count(read_file(rig_->audit_log()), "event=sign "), before + 2) << key << ": p11tool's and the marker's";
  }
}

// The audit trail names the program that signed through the module.
TEST_F(Pkcs11Module, AuditNamesThePkcs11Program) {
  sign("-m SHA256-RSA-PKCS --id 01", data_file(), "audited.sig");
  // exe= when firmad may read the program's /proc/PID/exe, else its comm=.
  EXPECT_TRUE(eventually([] {
    const auto audit = read_file(rig_->audit_log());
    return audit.find("exe=/usr/bin/pkcs11-tool ") != std::string::npos || audit.find("comm=pkcs11-tool ") != std::string::npos;
  })) << read_file(rig_->audit_log());
}

TEST_F(Pkcs11Module, SshKeygenListsTheKeys) {
  const auto r = run("FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " ssh-keygen -D " + quote(module()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const std::string id : {"01", "02", "04"}) {
    auto pub = run("ssh-keygen -i -m PKCS8 -f " + quote(rig_->public_key_pem(id).string()));
    ASSERT_EQ(pub.exit_code, 0) << pub.out;
    pub.out.pop_back();  // the newline
    EXPECT_NE(r.out.find(pub.out), std::string::npos) << id << ": " << pub.out << "\nin\n" << r.out;
  }
}

// Java's SunPKCS11 (keytool, jarsigner) through the module: the keystore
// lists each key with its certificate, jarsigner signs (Java signs with
// C_SignInit/C_SignUpdate/C_SignFinal), jarsigner and OpenSSL verify.
TEST_F(Pkcs11Module, JavaKeytoolListsAndJarsignerSigns) {
  write_file(file("java.cfg"), "name = firmad\nlibrary = " + module() + "\nslotListIndex = 0\n");
  const std::string env = "FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " ";
  const std::string store = " -keystore NONE -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 -providerArg " +
                            quote(file("java.cfg").string()) + " -storepass 000000 ";
  auto r = run(env + "keytool -list" + store, 120);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("Your keystore contains 3 entries"), std::string::npos) << r.out;
  for (const char* alias : {"empresa, PrivateKeyEntry", "firma-ec, PrivateKeyEntry", "firma-p384, PrivateKeyEntry"})
    EXPECT_NE(r.out.find(alias), std::string::npos) << alias << "\n" << r.out;

  write_file(file("hola.txt"), "hola\n");
  for (const auto& [alias, block] : std::vector<std::pair<std::string, std::string>>{{"empresa", "EMPRESA.RSA"}, {"firma-ec", "FIRMA-EC.EC"}}) {
    const fs::path jar = file(alias + ".jar"), dir = file(alias + "-unpacked");
    r = run("cd " + quote(rig_->dir().string()) + " && jar cf " + quote(jar.string()) + " hola.txt");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run(env + "jarsigner" + store + quote(jar.string()) + " " + alias, 120);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run("jarsigner -verify " + quote(jar.string()), 120);
    EXPECT_NE(r.out.find("jar verified."), std::string::npos) << alias << ": " << r.out;
    // The signature block, checked by OpenSSL over the signed .SF file.
    r = run("mkdir -p " + quote(dir.string()) + " && cd " + quote(dir.string()) + " && unzip -o -q " + quote(jar.string()) +
            " && openssl cms -verify -inform DER -binary -noverify -in META-INF/" + block + " -content META-INF/" +
            block.substr(0, block.find('.')) + ".SF -out /dev/null");
    EXPECT_EQ(r.exit_code, 0) << alias << ": " << r.out;
    // A changed file no longer verifies.
    write_file(file("hola.txt"), "adiós\n");
    r = run("cd " + quote(rig_->dir().string()) + " && zip -q " + quote(jar.string()) + " hola.txt && jarsigner -verify " + quote(jar.string()), 120);
    EXPECT_EQ(r.out.find("jar verified."), std::string::npos) << alias << ": " << r.out;
    write_file(file("hola.txt"), "hola\n");
  }
  EXPECT_TRUE(eventually([] { return read_file(rig_->audit_log()).find("jarsigner") != std::string::npos; }))
      << read_file(rig_->audit_log());
}

// OpenSSL with libp11's engine (Debian's libengine-pkcs11-openssl) and
// pkcs11: URIs: pkeyutl, a self-signed certificate, CMS, and TLS client
// authentication against s_server -Verify, TLS 1.2 and 1.3, RSA (PSS) and ECDSA.
TEST_F(Pkcs11Module, OpenSslEngineSignsCertificatesCmsAndTlsClientAuth) {
  const std::string env = "FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " PKCS11_MODULE_PATH=" + quote(module()) + " ";
  const std::string engine = " -engine pkcs11 -keyform engine ";
  auto uri = [](const std::string& key) { return quote("pkcs11:object=" + key + ";type=private"); };
  const fs::path data = data_file();
  const fs::path digest = digest_file("sha256", "engine.sha256");
  for (const auto& [key, id] : std::vector<std::pair<std::string, std::string>>{{"empresa", "01"}, {"firma-ec", "02"}}) {
    const fs::path sig = file("engine-" + key + ".sig");
    auto r = run(env + "openssl pkeyutl -sign" + engine + "-inkey " + uri(key) + " -in " + quote(digest.string()) + " -out " +
                 quote(sig.string()) + " -pkeyopt digest:sha256");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = verify("sha256", id, sig, data);
    EXPECT_EQ(r.exit_code, 0) << key << ": " << r.out;
  }

  // A self-signed certificate made with the token key verifies under itself.
  const fs::path self = file("self.pem");
  auto r = run(env + "openssl req -new -x509 -days 1 -subj /CN=firmad-p11" + engine + "-key " + uri("empresa") + " -out " +
               quote(self.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl verify -CAfile " + quote(self.string()) + " " + quote(self.string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl x509 -noout -pubkey -in " + quote(self.string()));
  EXPECT_EQ(r.out, read_file(rig_->public_key_pem("01")));

  // CMS SignedData with the key's certificate, verified against the test CA.
  const fs::path cms = file("engine.cms");
  r = run(env + "openssl cms -sign -binary -nodetach -outform DER" + engine + "-inkey " + uri("empresa") + " -signer " +
          quote((rig_->dir() / "empresa.crt.pem").string()) + " -in " + quote(data.string()) + " -out " + quote(cms.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl cms -verify -inform DER -in " + quote(cms.string()) + " -CAfile " + quote(rig_->ca().string()) + " -out /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // TLS: a server that demands a client certificate from the test CA.
  r = run("cd " + quote(rig_->dir().string()) +
          " && openssl req -x509 -newkey rsa:2048 -nodes -keyout tls-server.key -out tls-server.pem -subj /CN=localhost -days 1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string port = std::to_string(20000 + ::getpid() % 20000);
  const std::string server = "openssl s_server -accept 127.0.0.1:" + port + " -cert " + quote(file("tls-server.pem").string()) +
                             " -key " + quote(file("tls-server.key").string()) + " -Verify 1 -verify_return_error -CAfile " +
                             quote(rig_->ca().string()) + " -www >" + quote(file("s_server.log").string()) + " 2>&1 & s=$!; " +
                             // s_server says ACCEPT once it listens (at most 10 s).
                             "for i in $(seq 200); do grep -q ACCEPT " + quote(file("s_server.log").string()) +
                             " && break; sleep 0.05; done; ";
  for (const std::string key : {"empresa", "firma-ec"})
    for (const std::string version : {"tls1_2", "tls1_3"}) {
      const auto signs = count(read_file(rig_->audit_log()), "key=" + key + " ");
      r = run(server + "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | " + env + "openssl s_client -connect 127.0.0.1:" + port + " -" +
              version + engine + "-key " + uri(key) + " -cert " + quote((rig_->dir() / (key + ".crt.pem")).string()) +
              " -CAfile " + quote(file("tls-server.pem").string()) + " -verify_return_error -quiet; rc=$?; kill $s; exit $rc");
      EXPECT_EQ(r.exit_code, 0) << key << " " << version << ": " << r.out << read_file(file("s_server.log"));
      EXPECT_NE(r.out.find("HTTP/1.0 200 ok"), std::string::npos) << key << " " << version << ": " << r.out;
      EXPECT_TRUE(eventually([&] { return count(read_file(rig_->audit_log()), "key=" + key + " ") == signs + 1; }))
          << key << " " << version;
    }
  // TLS 1.3 signs with RSA-PSS, never PKCS#1 v1.5.
  EXPECT_NE(read_file(rig_->audit_log()).find("key=empresa scheme=rsa-pss"), std::string::npos);
}

// NSS (libnss3-tools): the module added to a fresh database with modutil;
// certutil lists the certificates and the keys, and signs certificate
// requests with the RSA and the EC key (NSS names a key by its CKA_ID);
// cmsutil signs a file with each; all verified by OpenSSL.
TEST_F(Pkcs11Module, NssListsCertificatesAndKeysAndSignsRequestsAndCms) {
  const fs::path db = file("nssdb");
  fs::create_directories(db);
  const std::string env = "FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " ";
  const std::string d = " -d sql:" + quote(db.string()) + " ";
  auto r = run("certutil -N --empty-password" + d + "&& modutil -add firmad -force -libfile " + quote(module()) + " -dbdir sql:" +
               quote(db.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run(env + "certutil -L -h all" + d);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* nick : {"firmad-demo:empresa ", "firmad-demo:firma-ec ", "firmad-demo:firma-p384 "})
    EXPECT_NE(r.out.find(nick), std::string::npos) << nick << "\n" << r.out;
  r = run(env + "certutil -K -h firmad-demo" + d);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("rsa      01"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ec       02"), std::string::npos) << r.out;
  for (const std::string id : {"01", "02"}) {
    const fs::path req = file("nss-" + id + ".csr");
    r = run(env + "certutil -R -h firmad-demo -k " + id + " -s CN=nss-through-firmad -Z SHA256 -a -o " + quote(req.string()) + d);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run("openssl req -verify -noout -in " + quote(req.string()));
    EXPECT_EQ(r.exit_code, 0) << id << ": " << r.out;
    EXPECT_NE(r.out.find("verify OK"), std::string::npos) << r.out;
    r = run("openssl req -noout -pubkey -in " + quote(req.string()));
    EXPECT_EQ(r.out, read_file(rig_->public_key_pem(id))) << id;
  }
  // CMS SignedData with signed attributes (-G, as S/MIME has them). -Y NONE:
  // without it cmsutil also looks for the signer's encryption certificate,
  // which a signature-only certificate like SAT's is not
  // (SEC_ERROR_INADEQUATE_KEY_USAGE).
  const fs::path data = data_file();
  for (const std::string alias : {"empresa", "firma-ec"}) {
    const fs::path cms = file("nss-" + alias + ".p7");
    const auto signs = count(read_file(rig_->audit_log()), "key=" + alias + " ");
    r = run(env + "cmsutil -S -G -Y NONE -N firmad-demo:" + alias + " -i " + quote(data.string()) + " -o " +
            quote(cms.string()) + d);
    ASSERT_EQ(r.exit_code, 0) << alias << ": " << r.out;
    r = run("openssl cms -verify -inform DER -in " + quote(cms.string()) + " -CAfile " + quote(rig_->ca().string()) +
            " -out /dev/null");
    EXPECT_EQ(r.exit_code, 0) << alias << ": " << r.out;
    EXPECT_TRUE(eventually([&] {
      const auto audit = read_file(rig_->audit_log());
      if (count(audit, "key=" + alias + " ") != signs + 1) return false;
      const auto at = audit.rfind("key=" + alias + " ");
      const auto line = audit.substr(at, audit.find('\n', at) - at);
      return line.find("cmsutil") != std::string::npos;
    })) << alias << ": one audited signature, naming cmsutil\n" << read_file(rig_->audit_log());
  }
}

// OpenSSH: ssh -I logs into a local sshd with the token key (RSA, then
// ECDSA), signed in ssh-pkcs11-helper through firmad; a key sshd does not
// know is refused, so the login is the token key's doing.
TEST_F(Pkcs11Module, SshLogsIntoSshdWithTheTokenKey) {
  const fs::path dir = file("sshd");
  fs::create_directories(dir);
  fs::create_directories("/run/sshd");  // sshd's privilege separation directory
  auto r = run("ssh-keygen -q -t ed25519 -N '' -f " + quote((dir / "host").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::string port = std::to_string(40000 + ::getpid() % 20000);
  write_file(dir / "config", "Port " + port + "\nListenAddress 127.0.0.1\nHostKey " + (dir / "host").string() +
                                 "\nAuthorizedKeysFile " + (dir / "authorized_keys").string() +
                                 "\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                                 "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile " +
                                 (dir / "pid").string() + "\n");
  const std::string ssh = "FIRMAD_SOCKET=" + quote(rig_->socket().string()) + " ssh -F /dev/null -I " + quote(module()) +
                          " -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p " + port +
                          " root@127.0.0.1 echo logged-in-through-firmad";
  auto login_with = [&](const std::string& authorized) {
    write_file(dir / "authorized_keys", authorized);
    // sshd writes its pid file once it listens (waited for, at most 10 s).
    const auto out = run("/usr/sbin/sshd -f " + quote((dir / "config").string()) + " -E " + quote((dir / "sshd.log").string()) +
                         " && for i in $(seq 200); do [ -s " + quote((dir / "pid").string()) +
                         " ] && break; sleep 0.05; done && " + ssh + "; rc=$?; kill $(cat " + quote((dir / "pid").string()) + "); exit $rc");
    return out;
  };
  for (const std::string id : {"01", "02"}) {
    const std::string alias = id == "01" ? "empresa" : "firma-ec";
    auto pub = run("ssh-keygen -i -m PKCS8 -f " + quote(rig_->public_key_pem(id).string()));
    ASSERT_EQ(pub.exit_code, 0) << pub.out;
    const auto signs = count(read_file(rig_->audit_log()), "key=" + alias + " ");
    r = login_with(pub.out);
    EXPECT_EQ(r.exit_code, 0) << alias << ": " << r.out << read_file(dir / "sshd.log");
    EXPECT_NE(r.out.find("logged-in-through-firmad"), std::string::npos) << alias << ": " << r.out;
    EXPECT_TRUE(eventually([&] { return count(read_file(rig_->audit_log()), "key=" + alias + " ") > signs; })) << alias;
  }
  // The records name the program that signed: ssh (exe= where firmad may
  // read /proc/PID/exe, else comm=).
  {
    const std::string audit = read_file(rig_->audit_log());
    EXPECT_TRUE(audit.find(" comm=ssh ") != std::string::npos || audit.find(" exe=/usr/bin/ssh ") != std::string::npos)
        << audit;
  }
  // A key that is not on the token.
  r = run("ssh-keygen -q -t ed25519 -N '' -f " + quote((dir / "stranger").string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = login_with(read_file(dir / "stranger.pub"));
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.find("logged-in-through-firmad"), std::string::npos) << r.out;
}

// firmad's allow lists reach the module: a uid sees only the keys it may use
// and signs with them; a uid allowed nothing sees no slot and cannot sign.
TEST(Pkcs11ModulePolicy, AUidSeesAndSignsWithOnlyTheKeysItMayUse) {
  TokenRig rig;
  const auto daemon = start_with_shared_key(rig);
  ASSERT_TRUE(daemon->wait_for_log("event=token-login")) << daemon->log();

  auto r = tool(rig.socket(), "-O", as_uid(65532));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Private Key Object"), 1u) << r.out;
  EXPECT_EQ(count(r.out, "label:      firma-p384"), 3u) << r.out;
  EXPECT_EQ(r.out.find("empresa"), std::string::npos) << r.out;
  r = tool(rig.socket(), "-L", as_uid(65532));
  EXPECT_EQ(count(r.out, "Slot "), 1u) << r.out;  // no EdDSA key: no EdDSA slot

  write_file(rig.dir() / "data.txt", "compartida\n", 0644);
  fs::create_directory(rig.dir() / "out");
  ASSERT_EQ(::chown((rig.dir() / "out").c_str(), 65532, 65534), 0);
  const fs::path sig = rig.dir() / "out" / "shared.sig";
  r = tool(rig.socket(), "--sign -m ECDSA-SHA256 --id 04 --signature-format openssl -i " + quote((rig.dir() / "data.txt").string()) +
                             " -o " + quote(sig.string()), as_uid(65532));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = run("openssl dgst -sha256 -verify " + quote(rig.public_key_pem("04").string()) + " -signature " + quote(sig.string()) +
          " " + quote((rig.dir() / "data.txt").string()));
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // Root may use both aliases of the P-384 key: the token's objects appear once.
  r = tool(rig.socket(), "-O");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Private Key Object"), 3u) << r.out;
  EXPECT_EQ(count(r.out, "label:      firma-p384"), 3u) << r.out;

  r = tool(rig.socket(), "-L", as_uid(65533));
  EXPECT_EQ(r.out.find("Slot "), std::string::npos) << r.out;
  r = tool(rig.socket(), "--sign -m ECDSA-SHA256 --id 04 -i " + quote((rig.dir() / "data.txt").string()) + " -o /dev/null",
           as_uid(65533));
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_TRUE(eventually([&] { return read_file(rig.audit_log()).find("uid=65532") != std::string::npos; }))
      << read_file(rig.audit_log());
  EXPECT_EQ(read_file(rig.audit_log()).find("uid=65533"), std::string::npos) << read_file(rig.audit_log());
}

// Without firmad the module still loads and shows no token; a program
// started once firmad is back sees the slots again.
TEST(Pkcs11ModuleAvailability, FirmadUnreachableMeansNoTokenNotAFailure) {
  TokenRig rig;
  // C_Initialize and C_GetInfo succeed (pkcs11-tool -I then exits 1 for "No slots.").
  auto r = tool(rig.socket(), "-I");
  EXPECT_EQ(r.out.find("C_Initialize failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("firmad signing daemon"), std::string::npos) << r.out;
  r = tool(rig.socket(), "-L");
  EXPECT_NE(r.out.find("No slots."), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("Slot "), std::string::npos) << r.out;
  r = tool(rig.socket(), "--sign -m ECDSA --id 02 -i /etc/hostname -o /dev/null");
  EXPECT_NE(r.exit_code, 0) << r.out;

  const std::string config = rig.write_config({{"socket =", "socket = \"" + rig.socket().string() + "\""}});
  Daemon daemon(config, rig.socket());
  ASSERT_TRUE(daemon.wait_for_log("event=token-login")) << daemon.log();
  r = tool(rig.socket(), "-L");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(count(r.out, "Slot "), 2u) << r.out;
}

// SHA-1 through the module only for keys whose configuration allows it
// (allow_sha1; issue 14, item 5): here empresa (RSA), not firma-ec.
class Pkcs11ModuleSha1 : public Pkcs11Module {
 protected:
  static void SetUpTestSuite() {
    start({{"uri = \"pkcs11:object=empresa;id=%01\"", "uri = \"pkcs11:object=empresa;id=%01\"\nallow_sha1 = true"}});
  }
};

TEST_F(Pkcs11ModuleSha1, SignsSha1OnlyWithAKeyThatAllowsIt) {
  auto r = p11("-M");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("SHA1-RSA-PKCS,"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("ECDSA-SHA1"), std::string::npos) << "firma-ec does not allow SHA-1\n" << r.out;
  const auto data = data_file();
  auto sig = sign("-m SHA1-RSA-PKCS --id 01", data, "rsa-sha1.sig");
  EXPECT_EQ(verify("sha1", "01", sig, data).exit_code, 0);
  // A SHA-1 DigestInfo through CKM_RSA_PKCS, as old programs send it.
  const firma::Bytes sha1_info{0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
  sig = sign("-m RSA-PKCS --id 01", digest_file("sha1", "sha1-info.bin", sha1_info), "rsa-pkcs-sha1.sig");
  EXPECT_EQ(verify("sha1", "01", sig, data).exit_code, 0);
  // firma-ec: refused before firmad is asked, with nothing signed.
  r = p11("--sign -m ECDSA-SHA1 --id 02 -i " + quote(data.string()) + " -o " + quote(file("ec-sha1.sig").string()));
  EXPECT_NE(r.exit_code, 0) << r.out;
  r = p11("--sign -m ECDSA --id 02 -i " + quote(digest_file("sha1", "ec-d1.bin").string()) + " -o " + quote(file("ec-d1.sig").string()));
  EXPECT_NE(r.exit_code, 0) << "a 20-byte digest is no SHA-2 digest, and SHA-1 is not allowed for firma-ec\n" << r.out;
  EXPECT_NE(read_file(rig_->audit_log()).find("key=empresa scheme=rsa-pkcs1 hash=sha1"), std::string::npos);
}

// An administrator is shown every key by firmad, but signs only with those
// whose allow lists admit it: through the module it sees only those (here:
// none; root is the administrator, and every key allows only uid 12345).
class Pkcs11ModuleAdmin : public Pkcs11Module {
 protected:
  static void SetUpTestSuite() { start({{"allow_users =", "allow_users = [12345]"}}); }
};

TEST_F(Pkcs11ModuleAdmin, AnAdministratorSeesOnlyTheKeysItMaySignWith) {
  const auto keys = client().list_keys();
  ASSERT_EQ(keys.size(), 4u) << "firmad shows an administrator every key";
  for (const auto& k : keys) EXPECT_FALSE(k.value("mayUse", true)) << k["alias"];
  auto r = p11("-O");
  EXPECT_EQ(count(r.out, "Private Key Object"), 0u) << r.out;
  r = p11("-L");
  EXPECT_EQ(r.out.find("token label"), std::string::npos) << "no slot holds a key root may use\n" << r.out;
}

}  // namespace
}  // namespace firmad::test
