#[test]
fn command_line() {
    bitmask_testkit::check_service_cli("bitmask-store");
}
