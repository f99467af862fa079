export { Backoff } from "./backoff.js";
export {
  type Message, type Recovered, RtcClient, type RtcClientOptions, RtcError, type RtcEvents, type Session, type State,
  type StorageLike, type WebSocketConstructor, type WebSocketLike,
} from "./client.js";
export { Cursor } from "./cursor.js";
export {
  type ClientFrame, type CloseReason, formatMessageId, isNew, type MessageId, parseMessageId, parseServerFrame,
  reconnectsAfter, renderClientFrame, resumePoint, type ServerFrame,
} from "./protocol.js";
export { RECENT_SENDS, RecentSends } from "./recent.js";
