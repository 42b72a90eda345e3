// The signing threads' session pool.
#include "daemon/token/session_pool.hpp"

namespace firmad {

std::vector<std::unique_ptr<pkcs11::Session>> SessionPool::open_all(const std::shared_ptr<pkcs11::Module>& module,
                                                                    pkcs11::SlotId slot) const {
  std::vector<std::unique_ptr<pkcs11::Session>> opened;
  opened.reserve(sessions_.size());
  for (std::size_t i = 0; i < sessions_.size(); ++i) opened.push_back(std::make_unique<pkcs11::Session>(module, slot));
  return opened;
}

void SessionPool::replace_all(std::vector<std::unique_ptr<pkcs11::Session>> opened) {
  opened.resize(sessions_.size());
  sessions_.swap(opened);  // the old sessions close as `opened` goes
}

void SessionPool::reopen(std::size_t i, std::unique_ptr<pkcs11::Session> fresh) { sessions_.at(i) = std::move(fresh); }

void SessionPool::drop(std::size_t i, Handles handles) {
  auto& session = sessions_.at(i);
  if (session && handles == Handles::Forget) session->forget();
  session.reset();
}

void SessionPool::drop_all(Handles handles) {
  for (std::size_t i = 0; i < sessions_.size(); ++i) drop(i, handles);
}

}  // namespace firmad
