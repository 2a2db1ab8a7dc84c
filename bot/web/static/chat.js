// The local chat box: posts each line to /api/chat and shows the bot's replies under it.
"use strict";

const form = document.getElementById("chat");
const user = document.getElementById("user");
const text = document.getElementById("text");
const log = document.getElementById("log");

user.value = localStorage.getItem("concertbot-chat-user") || "";

function say(who, line, className) {
  const item = document.createElement("li");
  if (className) item.className = className;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  item.append(name, line);
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const line = { user: user.value.trim(), text: text.value };
  localStorage.setItem("concertbot-chat-user", line.user);
  say(line.user, line.text);
  text.value = "";
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(line),
    });
    const answer = await response.json();
    if (!response.ok) {
      say("error", answer.error || `HTTP ${response.status}`, "error");
      return;
    }
    for (const reply of answer.replies) say("concertbot", reply, "bot");
    if (!answer.replies.length) say("concertbot", "(no reply)", "bot");
  } catch (error) {
    say("error", `could not reach the bot: ${error}`, "error");
  }
  text.focus();
});
