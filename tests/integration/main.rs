//! Integration tests: real `modeld` processes driven through `modelctl`, as a user
//! would. One test binary, grouped by topic.

mod crash;
mod discovery;
mod hostile;
mod lab;
mod lifecycle;
mod publish_export;
mod refusals;
mod transfer;
