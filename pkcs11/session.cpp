// Session lifetime, login and object search.
#include "pkcs11/session.hpp"

#include "pkcs11/error.hpp"

namespace firmad::pkcs11 {

Session::Session(std::shared_ptr<Module> module, SlotId slot) : Session(std::move(module), slot, Access::ReadOnly) {}

Session::Session(std::shared_ptr<Module> module, SlotId slot, Access access)
    : module_(std::move(module)), slot_(slot), handle_(CK_INVALID_HANDLE) {
  const CK_FLAGS flags = CKF_SERIAL_SESSION | (access == Access::ReadWrite ? CKF_RW_SESSION : 0);
  check(module_->fn()->C_OpenSession(slot_, flags, nullptr, nullptr, &handle_), "C_OpenSession");
}

Session::Session(Session&& other) noexcept
    : module_(std::move(other.module_)), slot_(other.slot_), handle_(other.handle_) {
  other.handle_ = CK_INVALID_HANDLE;
}

Session::~Session() {
  if (handle_ != CK_INVALID_HANDLE && module_) module_->fn()->C_CloseSession(handle_);
}

void Session::login(std::string_view pin) {
  const CK_RV rv = module_->fn()->C_Login(handle_, CKU_USER,
                                          reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(pin.data())), pin.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) throw Error("C_Login", rv);
}

void Session::login_on_reader() {
  const CK_RV rv = module_->fn()->C_Login(handle_, CKU_USER, nullptr, 0);
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) throw Error("C_Login", rv);
}

void Session::reach_device() const {
  CK_BYTE byte = 0;
  const CK_RV rv = module_->fn()->C_GenerateRandom(handle_, &byte, 1);
  if (rv != CKR_OK && rv != CKR_RANDOM_NO_RNG && rv != CKR_FUNCTION_NOT_SUPPORTED) throw Error("C_GenerateRandom", rv);
}

void Session::logout() {
  const CK_RV rv = module_->fn()->C_Logout(handle_);
  if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN) throw Error("C_Logout", rv);
}

bool Session::logged_in() const {
  CK_SESSION_INFO info{};
  check(module_->fn()->C_GetSessionInfo(handle_, &info), "C_GetSessionInfo");
  return info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS;
}

std::vector<ObjectHandle> Session::find(CK_OBJECT_CLASS cls, const std::optional<std::string>& label,
                                        const std::optional<Bytes>& id, std::size_t limit) const {
  std::vector<CK_ATTRIBUTE> tmpl;
  tmpl.push_back({CKA_CLASS, &cls, sizeof cls});
  if (label) tmpl.push_back({CKA_LABEL, const_cast<char*>(label->data()), label->size()});
  if (id) tmpl.push_back({CKA_ID, const_cast<std::uint8_t*>(id->data()), id->size()});
  const auto fn = module_->fn();
  check(fn->C_FindObjectsInit(handle_, tmpl.data(), tmpl.size()), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> found(limit);
  CK_ULONG count = 0;
  const CK_RV rv = fn->C_FindObjects(handle_, found.data(), found.size(), &count);
  fn->C_FindObjectsFinal(handle_);
  check(rv, "C_FindObjects");
  found.resize(count);
  return {found.begin(), found.end()};
}

std::optional<Bytes> Session::attribute(ObjectHandle object, CK_ATTRIBUTE_TYPE type) const {
  CK_ATTRIBUTE a{type, nullptr, 0};
  CK_RV rv = module_->fn()->C_GetAttributeValue(handle_, object, &a, 1);
  if (rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID) return std::nullopt;
  check(rv, "C_GetAttributeValue");
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) return std::nullopt;
  Bytes value(a.ulValueLen);
  a.pValue = value.data();
  rv = module_->fn()->C_GetAttributeValue(handle_, object, &a, 1);
  if (rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID) return std::nullopt;
  check(rv, "C_GetAttributeValue");
  value.resize(a.ulValueLen);
  return value;
}

std::optional<unsigned long> Session::ulong_attribute(ObjectHandle object, CK_ATTRIBUTE_TYPE type) const {
  CK_ULONG v = 0;
  CK_ATTRIBUTE a{type, &v, sizeof v};
  const CK_RV rv = module_->fn()->C_GetAttributeValue(handle_, object, &a, 1);
  if (rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID) return std::nullopt;
  check(rv, "C_GetAttributeValue");
  return v;
}

void Session::destroy(ObjectHandle object) const {
  check(module_->fn()->C_DestroyObject(handle_, object), "C_DestroyObject");
}

}  // namespace firmad::pkcs11
