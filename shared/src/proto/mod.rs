pub fn carries_list(verb: &str) -> bool {
    matches!(verb, "CONTACTS-GET-RESPONSE" | "CONTACT-UPDATED")
}
