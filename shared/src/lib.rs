//! mSIM protocol types shared by the server, the relay and the client: the packet model and its
//! line codec, percent coding, timestamps, addresses, one typed enum per direction covering
//! every packet family, and the relay's capability tokens.

pub mod address;
pub mod clock;
pub mod codec;
pub mod error;
pub mod listen;
#[cfg(feature = "logging")]
pub mod logging;
pub mod packet;
pub mod percent;
pub mod proto;
pub mod relay_http;
#[cfg(feature = "settings")]
pub mod settings;
pub mod timestamp;
pub mod tls;
pub mod token;

pub use address::Address;
pub use codec::PacketCodec;
pub use error::PacketError;
pub use packet::{Fields, Packet};
