export { Backoff } from "./backoff.js";
export { Cursor } from "./cursor.js";
export {
  type ClientFrame, type CloseReason, formatMessageId, isNew, type MessageId, parseMessageId, parseServerFrame,
  reconnectsAfter, renderClientFrame, resumePoint, type ServerFrame,
} from "./protocol.js";
