// The drivers' stdin: one JSON command a line, each handed to the handler named by its
// "op"; {"op": "close"} and the end of stdin both call onEnd once.
import { createInterface } from "node:readline";

export function onCommands(handlers, onEnd) {
  const lines = createInterface({ input: process.stdin });
  lines.on("close", onEnd);
  lines.on("line", (line) => {
    if (!line.trim()) {
      return;
    }
    const command = JSON.parse(line);
    if (command.op === "close") {
      lines.close();
    } else if (Object.hasOwn(handlers, command.op)) {
      handlers[command.op](command);
    } else {
      throw new Error(`unknown op: ${line}`);
    }
  });
}
