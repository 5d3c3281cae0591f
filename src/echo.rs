//! The `/ws/echo` connection, built only with the `test-echo` feature so
//! that the Autobahn|TestSuite cases (run by `scripts/autobahn`) can drive
//! tickwire's WebSocket layer: the same handshake, the same
//! `WebSocketConfig` limits and the same socket handling (reading through
//! tungstenite, writing from the outbox with `writev`, the sweeper's
//! pings and timeouts, the close codes on read errors: 1009, 1007, 1002)
//! as the subscriber endpoints, but no token and no protocol. It sends
//! back every text and binary message as received. Production builds
//! never contain it.

use std::sync::Arc;

use crate::connection::{self, Accepted, Context, Reader};
use crate::outbox::writer::binary_frame;
use crate::outbox::{Outbox, Overflow};
use crate::protocol::close::CloseReason;
use crate::protocol::encode::Frame;

struct Echo {
    outbox: Arc<Outbox>,
}

impl Reader for Echo {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        self.outbox.push(Frame::from(text), None);
        None
    }

    async fn on_binary(&mut self, data: &[u8]) -> Option<CloseReason> {
        let _ = self.outbox.push_raw(binary_frame(data));
        None
    }
}

/// Echoes until the client closes, a read fails, or the node shuts down.
pub async fn serve(accepted: Accepted, ctx: Arc<Context>) {
    let outbox = Arc::new(
        Outbox::new(ctx.config.outbound_queue_frames.get(), Overflow::Close)
            .with_max_bytes(ctx.config.outbound_queue_bytes.get())
            .with_encoding(accepted.encoding),
    );
    let mut echo = Echo {
        outbox: outbox.clone(),
    };
    connection::serve_test_echo(accepted, ctx, &mut echo, outbox).await;
}
