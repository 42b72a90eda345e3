// A renewal's effects outside the token: certificate files, the post-install command, the backup.
#include "daemon/renewal/install_steps.hpp"

#include <sys/stat.h>

#include "daemon/log.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/subprocess.hpp"
#include "daemon/state.hpp"

namespace firmad::renewal {

namespace {
constexpr std::size_t kPostInstallOutput = 64 * 1024;
}  // namespace

void write_certificate_files(const RenewalConfig& c, const Bytes& certificate, const std::vector<Bytes>& chain) {
  if (!c.certificate_file.empty())
    replace_file(c.certificate_file, to_pem(certificate), c.file_mode, c.file_owner, c.file_group);
  if (!c.chain_file.empty()) {
    std::string pem;
    for (const auto& x : chain) pem += to_pem(x);
    replace_file(c.chain_file, pem, c.file_mode, c.file_owner, c.file_group);
  }
}

std::string run_post_install(const RenewalConfig& c, const std::string& alias) {
  if (c.post_install.empty()) return {};
  ProgramResult p;
  try {
    p = run_program(c.post_install, {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", "FIRMAD_KEY=" + alias},
                    c.post_install_timeout, kPostInstallOutput);
  } catch (const std::exception& e) {
    p.errors = e.what();
  }
  if (p.exit_code == 0) return {};
  const std::string result = p.describe(c.post_install_timeout, kPostInstallOutput);
  log::warning("post-install-failed", {{"key", alias}, {"result", result}, {"stderr", p.errors.substr(0, 200)}});
  return "post-install command failed (" + result + ")";
}

std::string back_up_certificate(const std::filesystem::path& dir, const std::string& alias, const std::string& serial,
                                const Bytes& certificate) {
  ::mkdir(dir.c_str(), 0700);
  const std::string path = (dir / (alias + "-" + (serial.empty() ? "unknown" : serial) + ".pem")).string();
  replace_file(path, to_pem(certificate), 0600);
  return path;
}

}  // namespace firmad::renewal
